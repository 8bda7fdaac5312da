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
