"""The package's layout holds: no wing (ingress, queue, worker) imports another, the contract imports
no wing, and the shared vocabulary at the top imports none either; only the entry points
(``deployments``, ``launcher``) know the wings. Read from the source's imports, lazy ones included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "serve_app"
WINGS = ("ingress", "queue", "worker")
ENTRY = {"deployments", "launcher"}


def imported(path: Path) -> set[str]:
    """The ``serve_app`` modules ``path`` imports, as dotted names under the package."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level + 1])
                names = [".".join(base + ([node.module] if node.module else []) + ([] if node.module else [a.name]))
                         for a in node.names]
            elif (node.module or "").startswith("serve_app"):
                names = [node.module.removeprefix("serve_app").lstrip(".")]
            else:
                continue
            out.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("serve_app.") for a in node.names if a.name.startswith("serve_app."))
    return out


def part_of(module: str) -> str:
    head = module.split(".")[0]
    return head if head in (*WINGS, "contract") else ("entry" if head in ENTRY else "vocabulary")


def test_no_wing_imports_another_and_the_contract_and_vocabulary_import_none():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        mine = part_of(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for target in imported(path):
            theirs = part_of(target)
            if theirs in WINGS and theirs != mine and mine != "entry":
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert wrong == []


def test_the_reader_sees_relative_and_lazy_imports():
    worker = PACKAGE / "worker" / "deployment.py"
    assert {"contract.queue_client", "worker.reports", "config"} <= imported(worker)
    assert "worker.memplan" in imported(PACKAGE / "launcher.py")  # a lazy import, inside a function
    assert part_of("queue.core") == "queue" and part_of("launcher") == "entry" and part_of("auth") == "vocabulary"
