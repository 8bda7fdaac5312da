"""qwen-serve's command line: a bad config file is refused before any Ray process starts."""

import pytest
import yaml

from serve_app.launcher import main


def _config(tmp_path, **args) -> str:
    config = {"applications": [{"name": "qwen-image-edit", "route_prefix": "/",
                                "import_path": "serve_app.deployments:build_app", "args": args}]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("args, says", [
    ({"graceful_stop_seconds": -1}, "graceful_stop_seconds"),
    ({"no_such_key": 1}, "no_such_key"),
])
def test_bad_args_are_refused_with_the_key_named(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as exit_:
        main([_config(tmp_path, **args)])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nope.yaml")])
    assert exit_.value.code == 2 and "nope.yaml" in capsys.readouterr().err


SWITCHES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_LOG_TO_STDERR")


def _env_at_init(tmp_path, monkeypatch, **args) -> dict:
    """Serve's switches as the environment had them when qwen-serve called ray.init."""
    import os

    import ray

    for name in SWITCHES:
        monkeypatch.setenv(name, "0")  # (restored after: main sets them)
    seen = {}

    def init(address=None, **kw):
        seen.update({name: os.environ.get(name) for name in SWITCHES}, address=address)
        raise RuntimeError("stop before starting anything")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeError, match="stop before"):
        main([_config(tmp_path, state_dir=str(tmp_path), **args)])
    return seen


def test_http_proxy_haproxy_switches_serve_before_the_cluster_starts(tmp_path, monkeypatch):
    """Serve reads the switch from the environment its processes start with: qwen-serve sets it
    before ray.init, for a cluster it starts."""
    seen = _env_at_init(tmp_path, monkeypatch, http_proxy="haproxy")
    assert all(seen[name] == "1" for name in SWITCHES) and seen["address"] == "local"  # never another's
    seen = _env_at_init(tmp_path, monkeypatch)
    assert all(seen[name] == "0" for name in SWITCHES)  # python: untouched


def test_the_graceful_stop_awaits_the_queue_in_an_event_loop(monkeypatch, caplog):
    """In Serve's throughput-optimized mode (haproxy) a handle has no blocking ``.result()`` outside
    an event loop; the launcher's drain awaits the answer instead."""
    from ray import serve

    from serve_app.launcher import drain

    class Answer:  # awaitable only, as the handle's response is in that mode
        def __await__(self):
            yield from ()
            return {"finished": 1, "requeued": ["j2"], "queued": 3}

    class Handle:
        class drain:
            @staticmethod
            def remote():
                return Answer()

    monkeypatch.setattr(serve, "get_deployment_handle", lambda name, app_name: Handle())
    with caplog.at_level("INFO", logger="serve_app.launcher"):
        drain(["app"], {"app": 1.0})
    assert "app: 1 running job(s) finished, 1 queued again, 3 waiting for the next start" in caplog.text


def test_cluster_settings_on_a_joined_cluster_only_warn(tmp_path, monkeypatch, caplog):
    import os

    from serve_app.launcher import use_cluster_env

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    with caplog.at_level("WARNING"):
        use_cluster_env({"RAY_SERVE_ENABLE_HA_PROXY": "1"}, "ray://head:10001")
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in caplog.text and "keeps the proxy it was started with" in caplog.text


def test_the_app_says_when_its_http_proxy_setting_cannot_apply(tmp_path, monkeypatch, capsys):
    from serve_app.config import build_settings

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    build_settings({"state_dir": str(tmp_path), "http_proxy": "haproxy"})
    assert "http_proxy: haproxy is applied by qwen-serve" in capsys.readouterr().out
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    build_settings({"state_dir": str(tmp_path), "http_proxy": "haproxy"})
    assert "http_proxy" not in capsys.readouterr().out


def test_fresh_start_and_backup_are_one_command_each_and_say_what_they_did(tmp_path, capsys):
    """Issue 24: the operator's two steps, with no Ray process started."""
    from serve_app.queue.job import Job
    from serve_app.queue.jobstore import StateLock
    from serve_app.queue.statefolder import open_checked

    state = tmp_path / "state"
    store, _ = open_checked(state / "jobs.sqlite3", state / "results")
    store.save(Job("job-1", "edit", "tiny", 1, None, 1000.0), [b"img"])
    store.close()
    config = _config(tmp_path, state_dir=str(state))
    assert main([config, "--backup", str(tmp_path / "backup")]) == 0
    assert "qwen-image-edit: 1 job(s) and 0 result file(s) backed up into" in capsys.readouterr().out
    assert (tmp_path / "backup" / "qwen-image-edit" / "jobs.sqlite3").is_file()
    lock = StateLock(state / "jobs.sqlite3")
    assert lock.try_acquire()  # a running server holds it
    assert main([config, "--fresh-start"]) == 1
    assert "the server is running on this state folder: stop it first" in capsys.readouterr().err
    lock.release()
    assert main([config, "--fresh-start"]) == 0
    assert "file(s) aside into" in capsys.readouterr().out
    aside = list(state.glob("set-aside-*"))
    assert len(aside) == 1 and {"jobs.sqlite3", "jobs.sqlite3.identity"} <= {p.name for p in aside[0].iterdir()}
    assert not (state / "jobs.sqlite3").exists()
