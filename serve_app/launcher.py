"""``qwen-serve CONFIG``: ``serve run CONFIG`` with a graceful stop on SIGTERM.

Why not plain ``serve run``: its process dies at once on SIGTERM (Ray's own signal handler), taking
the local cluster and every running job with it; the jobs survive in the state folder and run again
at the next start, but the work in progress is lost. This launcher deploys the same config file the
same way (Serve's own schema validates it; cluster options, then every application, each built by
its ``import_path`` builder from its ``args:``) and then, on the first SIGTERM or Ctrl-C:

1. asks each application's queue to ``drain``: no new job starts, running jobs get the app's
   ``graceful_stop_seconds`` to finish, jobs still running then are queued again (no attempt
   charged), queued jobs stay queued (all of it in the state folder);
2. shuts Serve and the Ray cluster down, and exits 0.

A second signal skips what is left of the grace period. ``--address`` joins a running cluster
instead of starting a local one (as ``serve run --address``).
"""

import argparse
import asyncio
import logging
import os
import pkgutil
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
OUR_BUILDER = "serve_app.deployments:build_app"
DRAIN_MARGIN_S = 15.0  # beyond the grace period: the queue's own bookkeeping and the Ray round trip


class _Stop:
    """Signal handling: while deploying or draining a signal aborts at once (KeyboardInterrupt);
    while serving, the first one starts the graceful stop."""

    def __init__(self):
        self.requested = threading.Event()
        self.phase = "deploying"

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.phase == "serving":
            log.info("%s received: stopping gracefully (a second signal stops at once)", name)
            self.phase = "draining"
            self.requested.set()
            return
        log.info("%s received: stopping now", name)
        raise KeyboardInterrupt


def load_config(path: Path):
    """The config file, validated by Serve's own schema (what ``serve run`` accepts)."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))


def build(app_schema):
    """An application from its import path (a builder called with ``args:``, or a bound app)."""
    from ray.serve import Application

    if app_schema.runtime_env or app_schema.deployments:
        log.warning("%s: runtime_env and deployments overrides are not applied by qwen-serve (use "
                    "`serve run` for those; the app's own args are)", app_schema.name)
    target = pkgutil.resolve_name(app_schema.import_path)
    return target if isinstance(target, Application) else target(app_schema.args)


def drain(app_names: list[str], grace: dict[str, float]) -> None:
    """Drain every application that has a queue; report what happened to its jobs."""
    # Awaited in an event loop, not with a blocking ``.result()``: in Serve's throughput-optimized
    # mode (``http_proxy: haproxy``) a handle's router runs in its caller's loop, so needs one.
    asyncio.run(_drain(app_names, grace))


async def _drain(app_names: list[str], grace: dict[str, float]) -> None:
    from ray import serve

    from .contract.queue_client import OperatorQueue

    for name in app_names:
        try:
            queue = OperatorQueue(serve.get_deployment_handle("QueueActor", app_name=name))
            outcome = await asyncio.wait_for(queue.drain(), grace.get(name, 30.0) + DRAIN_MARGIN_S)
        except Exception as exc:  # an app without our queue, a queue already gone, or out of time
            log.warning("%s: no graceful stop (%s); its jobs run again at the next start", name,
                        type(exc).__name__)
            continue
        log.info("%s: %d running job(s) finished, %d queued again, %d waiting for the next start", name,
                 outcome["finished"], len(outcome["requeued"]), outcome["queued"])


def use_cluster_env(env: dict[str, str], address: str | None) -> None:
    """Serve reads the ``http_proxy`` switch (``AppArgs.cluster_env``) from the environment its
    processes start in, so it is set before a local cluster starts; a cluster joined with
    ``--address`` keeps what it was started with (a warning names what differs)."""
    if address is None:
        os.environ.update(env)
        for name, value in sorted(env.items()):
            log.info("cluster setting %s=%s (from the config's http_proxy)", name, value)
        return
    differs = [f"{name}={value}" for name, value in sorted(env.items()) if os.environ.get(name) != value]
    if differs:
        log.warning("the config asks for %s, which applies only to a cluster started with it; the cluster at "
                    "%s keeps the proxy it was started with", ", ".join(differs), address)


def plan(config, path: Path) -> int:
    """``--plan``: each of this project's apps planned against its card (``memplan.config_plan``)."""
    from .config import AppArgs
    from .worker.memplan import config_plan

    # bitsandbytes announces at import that its optional CPU kernels are absent: not news for a plan.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    ok = True
    for app in config.applications:
        if app.import_path != OUR_BUILDER:
            continue
        lines, _, fits = config_plan(AppArgs.model_validate(app.args or {}))
        print(f"{path} ({app.name})")
        print("\n".join(lines), flush=True)
        ok = ok and fits
    return 0 if ok else 1


def state_step(apps: dict, backup_dir: Path | None) -> int:
    """``--backup DIR`` or ``--fresh-start`` for each of this project's apps (``statefolder``)."""
    from .queue.statefolder import StateDamaged, backup, fresh_start

    code = 0
    for name, args in apps.items():
        db, results = args.path(None, "jobs.sqlite3"), args.path(args.results_dir, "results")
        try:
            if backup_dir is not None:
                done = backup(db, results, backup_dir / name)
                print(f"{name}: {done.jobs} job(s) and {done.results} result file(s) backed up into {done.folder}"
                      + (f" ({done.results_gone} expired meanwhile)" if done.results_gone else ""), flush=True)
            else:
                moved = fresh_start(db, results)
                print(f"{name}: moved {len(moved.files)} file(s) aside into {moved.folder}; the next start is empty"
                      if moved.files else f"{name}: nothing to set aside in {db.parent}", flush=True)
        except (OSError, RuntimeError, StateDamaged) as exc:
            print(f"{name}: {exc}", file=sys.stderr, flush=True)
            code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qwen-serve", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="config/serve.yaml", type=Path,
                        help="Serve config file (default: config/serve.yaml)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: start a local one, as `serve run` does)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="a local cluster serves Prometheus metrics on this port (/metrics)")
    parser.add_argument("--plan", action="store_true",
                        help="print the GPU memory each preset needs under its profile (no weights, no GPU, "
                             "no Ray) and exit: 0 when every preset fits the config's card, 1 when not")
    parser.add_argument("--backup", type=Path, default=None, metavar="DIR",
                        help="copy each app's job database (SQLite's online backup) and the results its jobs "
                             "name into DIR/<app> while the server runs, and exit")
    parser.add_argument("--fresh-start", action="store_true",
                        help="with the server stopped: move each app's job database and results aside into a "
                             "dated folder in its state folder (nothing is deleted), so the next start is empty")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s qwen-serve %(message)s", stream=sys.stdout)
    from .config import AppArgs

    try:
        config = load_config(opts.config)
        # This project's apps: their args are checked before any Ray process starts.
        ours = {app.name: AppArgs.model_validate(app.args or {}) for app in config.applications
                if app.import_path == OUR_BUILDER}
        grace = {name: args.graceful_stop_seconds for name, args in ours.items()}
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        parser.error(f"{opts.config}: {exc}")
    if opts.plan:
        return plan(config, opts.config)
    if opts.backup or opts.fresh_start:
        return state_step(ours, opts.backup)

    import ray
    from ray import serve

    use_cluster_env({k: v for args in ours.values() for k, v in args.cluster_env().items()}, opts.address)
    stop = _Stop()
    extra = {"_metrics_export_port": opts.metrics_port} if opts.metrics_port and not opts.address else {}
    # "local": a cluster of its own. Without --address, ray.init would join the latest cluster
    # started on this machine (/tmp/ray/ray_current_cluster), and deploy into someone else's.
    ray.init(address=opts.address or "local", namespace="serve", **extra)
    # After ray.init: Ray installs its own SIGTERM handler, which would end the process at once.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    names: list[str] = []
    code = 0
    try:
        serve.start(proxy_location=config.proxy_location, http_options=config.http_options.model_dump(),
                    logging_config=config.logging_config)
        for app in config.applications:
            serve.run_many([serve.RunTarget(build(app), name=app.name, route_prefix=app.route_prefix,
                                            logging_config=app.logging_config or config.logging_config)],
                           wait_for_applications_running=False)
            names.append(app.name)
        http = config.http_options
        log.info("deployed %s; serving on http://%s:%s (SIGTERM or Ctrl-C stops gracefully)",
                 ", ".join(names), http.host, http.port)
        stop.phase = "serving"
        while not stop.requested.wait(1.0):
            pass
        drain(names, grace)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a deploy that failed: say why, then tear down what started
        log.error("stopping: %s: %s", type(exc).__name__, exc)
        code = 1
    finally:
        stop.phase = "stopping"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the teardown finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t0 = time.monotonic()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        log.info("stopped (teardown %.1fs)", time.monotonic() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
