"""What the benchmarks that start a local Ray cluster or server set up the same way (imported by
the scripts next to it, which run as ``python bench/<script>.py``): the environment that keeps
Ray on 127.0.0.1 without usage stats or tokens and hub downloads off, with the Serve control loop
every second as ``make serve`` runs it; and a free loopback port."""

import os
import socket

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1.0", "HF_HUB_OFFLINE": "1"}


def use_loopback_env() -> None:
    """``RAY_ENV`` in this process, where the caller's environment does not say otherwise."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
