"""Test support shared by the test modules (none of them imports another): the test key, uploads
and other inputs, and helpers that find, wait for and kill Serve replicas (Ray is imported inside
those, so unit tests stay light). Fixtures are in the conftest files."""

import copy
import io
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

KEY = "test-key-" + "x" * 24  # every test app's API key
ROOT = Path(__file__).resolve().parents[1]  # the repository
# Tiny presets: about a second of work per job (queue behaviour can be watched), ten seconds (to
# cancel while it runs), and a speck (many jobs).
SLOW = {"base": "builtin:tiny", "steps": 8, "cfg_scale": 1.0, "resolution": 384, "nominal_seconds": 2.0}
LONG = {**SLOW, "steps": 40, "nominal_seconds": 10.0}
SPECK = {"base": "builtin:tiny", "steps": 1, "cfg_scale": 1.0, "resolution": 64, "nominal_seconds": 0.1}


def config_args(file: str = "serve.yaml") -> dict:
    """A copy of the first application's args in ``config/<file>``."""
    config = yaml.safe_load((ROOT / "config" / file).read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def merged(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested dicts merged key by key (neither is changed)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wait_http(url: str, timeout: float = 120.0) -> None:
    """Wait until ``url`` answers 200 or 503 (the server is up, ready or not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(w=512, h=384, seed=0, fmt="PNG", exif_orientation=None):
    buf = io.BytesIO()
    im = Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


IMAGE = photo()


def plain_png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(w, h):
    """A tiny PNG whose header declares a w x h canvas."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --- waiting and replicas -----------------------------------------------------------------

def wait_for(predicate, timeout=30.0, every=0.05, show=None):
    """The first truthy value of ``predicate()``, polled every ``every`` seconds; AssertionError
    (with ``show()`` when given) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time" + (f": {show()}" if show else ""))


def remove_app(name: str) -> None:
    """Delete a test's own app without waiting for its replicas to stop: Serve stops them in the
    background, and an app left running would load the session's two cores for every later test."""
    from ray import serve

    serve.delete(name, _blocking=False)


def worker_info(app_name: str, timeout: float = 120.0) -> dict:
    """``ModelWorker.info()`` of the app's worker, retried while the replica starts."""
    from ray import serve

    handle = serve.get_deployment_handle("ModelWorker", app_name=app_name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return handle.info.remote().result(timeout_s=10)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def kill_replica(app_name: str, deployment: str = "ModelWorker", restart: bool = False) -> None:
    """Kill the one replica of ``deployment`` in ``app_name`` (Serve starts a replacement)."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app_name}#{deployment}#")]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=not restart)


def replica_process(app: str, deployment: str = "QueueActor"):
    """The app's (one) replica of a deployment in this process's cluster, found by its process title
    among the processes its raylet started (another test session's cluster may have an app of the
    same name on this machine): a psutil.Process."""
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            if any(f"ServeReplica:{app}:{deployment}" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:  # (a process that ended meanwhile)
            pass
    assert len(found) == 1, [p.cmdline() for p in found]
    return found[0]


def replica_rss(app: str, deployment: str = "QueueActor") -> int:
    """Resident memory of the app's (one) replica of a deployment."""
    return replica_process(app, deployment).memory_info().rss


def read_events(api, job_id, timeout=60.0) -> list[tuple[str, dict | None]]:
    """(event name, data) for every event of the stream until the server ends it; comments as ("", None)."""
    events, name, data = [], None, []
    with api.http.stream("GET", f"/api/v1/status/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                events.append(("", None))
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and name:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
    return events


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails its first ``fail_first`` requests with 500."""

    def __init__(self, fail_first=1):
        self.requests: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(500 if len(receiver.requests) <= receiver.fail_first else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()


def logs_folder() -> Path:
    """The Serve replicas' log files of this test session's Ray node."""
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"


def qwen_metrics(port: int) -> dict[str, list]:
    """The ``ray_qwen_`` metric families the node exports on ``port``, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text) if f.name.startswith("ray_qwen_")}

