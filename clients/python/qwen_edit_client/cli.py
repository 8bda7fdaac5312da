"""``qwen-edit``: the stations' command line (built on ``qwen_edit_client.client``).

    qwen-edit submit photo.jpg -i "make the sky blue" [--preset qwen-4step] [--seed 42] [--wait] [--out edited.png]
    qwen-edit status JOB_ID | result JOB_ID [--out FILE] | cancel JOB_ID | jobs | queue | models
    qwen-edit batch photos/ -i "make the sky blue" --out edited/

The server and key come from ``--url`` / ``--key`` or ``$QWEN_EDIT_URL`` / ``$QWEN_API_KEY``. Exit
status: 0 done, 1 the server refused or a job failed (its sentence is printed), 2 bad usage.
"""

import argparse
import json
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from .client import ApiError, Client, JobFailed
from .models import JobStatus, JobStatusResponse

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _print(obj) -> None:
    print(json.dumps(obj.model_dump() if hasattr(obj, "model_dump") else obj, indent=2))


class Progress:
    """A bar that shows the queue position while queued, then the denoising steps."""

    def __init__(self, job_id: str):
        self.bar = tqdm(total=1, desc=f"{job_id[:8]} queued", unit="step", leave=True, file=sys.stderr)

    def __call__(self, view: JobStatusResponse) -> None:
        if view.status is JobStatus.QUEUED:
            self.bar.set_description(f"{view.job_id[:8]} queued, position {view.position}")
        elif view.status is JobStatus.PROCESSING:
            if view.total_steps and self.bar.total != view.total_steps:
                self.bar.reset(total=view.total_steps)
            self.bar.set_description(f"{view.job_id[:8]} editing")
            self.bar.n = view.step
            self.bar.refresh()
        else:
            if view.status is JobStatus.COMPLETED and view.total_steps:
                self.bar.n = self.bar.total
            self.bar.set_description(f"{view.job_id[:8]} {view.status}")
            self.bar.close()


def cmd_submit(client: Client, args) -> int:
    job = client.submit(args.images, args.instruction, preset=args.preset, seed=args.seed,
                        system_prompt=args.system_prompt, priority=args.priority,
                        deadline_seconds=args.deadline)
    if not args.wait and args.out is None:
        _print(job)
        return 0
    view = client.wait(job.job_id, timeout=args.timeout, on_update=Progress(job.job_id))
    if view.status is not JobStatus.COMPLETED:
        print(f"Job {view.job_id} {view.status}" + (f": {view.error}" if view.error else ""), file=sys.stderr)
        return 1
    out = Path(args.out or f"{view.result_path or view.job_id + '.png'}")
    client.download(view.job_id, out)
    print(f"{view.job_id} completed: {out}")
    return 0


def cmd_result(client: Client, args) -> int:
    view = client.status(args.job_id)
    out = Path(args.out or view.result_path or f"{args.job_id}.png")
    client.download(args.job_id, out)
    print(out)
    return 0


def cmd_batch(client: Client, args) -> int:
    """Every image of a folder through the queue: at most ``--in-flight`` jobs outstanding (default:
    half the queue, so other stations keep room), the next submitted as one finishes; a full queue
    (429) is waited out, never given up on; results already in ``--out`` are skipped (re-run resumes)."""
    folder, out = Path(args.folder), Path(args.out)
    if not folder.is_dir():
        raise SystemExit(f"qwen-edit: {folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in images if not (out / f"{p.stem}.png").exists()]
    if not todo:
        print(f"nothing to do: {len(images)} image(s), all already in {out}")
        return 0
    in_flight = args.in_flight or max(1, client.queue().max_queue_size // 2)
    failed: list[str] = []
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="batch", unit="image", file=sys.stderr)

    def one(path: Path) -> None:
        try:
            view = client.submit(path, args.instruction, preset=args.preset, seed=args.seed,
                                 priority=args.priority, wait_for_room=float("inf"))
            final = client.wait(view.job_id, timeout=args.timeout)
            if final.status is JobStatus.COMPLETED:
                client.download(final.job_id, out / f"{path.stem}.png")
            else:
                with lock:
                    failed.append(f"{path.name}: {final.status}" + (f" ({final.error})" if final.error else ""))
        except ApiError as exc:
            with lock:
                failed.append(f"{path.name}: {exc.detail}")
        finally:
            bar.update(1)

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        pending: set[Future] = set()
        for path in todo:
            if len(pending) >= in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
            pending.add(pool.submit(one, path))
        wait(pending)
    bar.close()
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{len(todo) - len(failed)} of {len(todo)} edited into {out}"
          + (f" ({len(images) - len(todo)} were already there)" if len(images) > len(todo) else ""))
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwen-edit", description="Edit images with the Qwen Image Edit API.")
    p.add_argument("--url", help="server address (default: $QWEN_EDIT_URL or http://127.0.0.1:8000)")
    p.add_argument("--key", help="API key (default: $QWEN_API_KEY)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="queue an edit (with --wait: follow it and download the result)")
    s.add_argument("images", nargs="+", help="one to three images (JPEG or PNG)")
    s.add_argument("-i", "--instruction", required=True)
    s.add_argument("--preset")
    s.add_argument("--seed", type=int)
    s.add_argument("--system-prompt")
    s.add_argument("--priority", choices=("low", "normal", "high"), help="at most your key's (the default)")
    s.add_argument("--deadline", type=float, help="cancel the job if it has not finished in this many seconds")
    s.add_argument("--wait", action="store_true", help="show progress and download the result")
    s.add_argument("--out", help="where to write the result (implies --wait)")
    s.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    for name, text in (("status", "a job's status"), ("cancel", "cancel a job")):
        c = sub.add_parser(name, help=text)
        c.add_argument("job_id")
    r = sub.add_parser("result", help="download a job's result")
    r.add_argument("job_id")
    r.add_argument("--out")
    sub.add_parser("queue", help="the queue's counts")
    j = sub.add_parser("jobs", help="this station's recent jobs, newest first")
    j.add_argument("--limit", type=int, default=20)
    sub.add_parser("models", help="the presets the server offers")

    b = sub.add_parser("batch", help="edit every image of a folder, keeping the queue fed")
    b.add_argument("folder")
    b.add_argument("-i", "--instruction", required=True)
    b.add_argument("--out", required=True, help="folder for the results (<name>.png each)")
    b.add_argument("--preset")
    b.add_argument("--seed", type=int)
    b.add_argument("--priority", choices=("low", "normal", "high"), help="e.g. low, so stations' own jobs go first")
    b.add_argument("--in-flight", type=int, help="jobs outstanding at once (default: half the queue)")
    b.add_argument("--timeout", type=float, help="per job")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.url, args.key) as client:
            if args.command == "submit":
                return cmd_submit(client, args)
            if args.command == "batch":
                return cmd_batch(client, args)
            if args.command == "result":
                return cmd_result(client, args)
            simple = {"status": lambda: client.status(args.job_id), "cancel": lambda: client.cancel(args.job_id),
                      "queue": client.queue, "models": client.models,
                      "jobs": lambda: [view.model_dump() for view in client.jobs(args.limit)]}
            _print(simple[args.command]())
            return 0
    except JobFailed as exc:
        print(f"qwen-edit: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"qwen-edit: {exc.detail}" + (f" (HTTP {exc.status})" if exc.status else ""), file=sys.stderr)
        return 1
    except OSError as exc:  # an image that cannot be read, an output folder that cannot be written
        print(f"qwen-edit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
