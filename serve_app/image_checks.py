"""The picture check (``output_policy`` in config/serve.yaml): a detector looks at each result before
it is stored, and optionally at each upload before it is queued.

A checker is any class with ``detect(rgb) -> list[Finding]`` (``rgb``: a height x width x 3 ``uint8``
array), named in the YAML as ``module:Class``; ``nudenet`` names the one shipped here. The policy
withholds a picture when the checker finds one of the configured labels with at least the configured
score. Fail closed: a checker that raises withholds the result (or refuses the upload with 503), it
never lets a picture through unchecked.

Plain Python: no Ray. The checker's own imports (onnxruntime, OpenCV) happen when it is built.
"""

import logging
import pkgutil
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import BadRequest, ServiceUnavailable

log = logging.getLogger(__name__)

NUDENET = "nudenet"
NUDENET_INSTALL = "pip install 'qwen-edit-serve[nudenet]'"
# NudeNet 3.4's detector labels, as its 320n model names them.
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
DEFAULT_LABELS = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


@dataclass(frozen=True)
class Finding:
    label: str
    score: float


class Checker(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Finding]: ...


class NudeNetChecker:
    """NudeNet's 320n ONNX detector (in its wheel: no download), on the CPU. About 30 ms a picture
    on one core of this project's test machine. NudeNet is AGPL-3.0: an opt-in extra."""

    def __init__(self):
        try:
            from nudenet import NudeDetector
        except ImportError:
            raise CheckerUnavailable(f"output_policy.checker nudenet is not installed here: {NUDENET_INSTALL}") \
                from None
        self._detector = NudeDetector()
        self._lock = threading.Lock()  # one ONNX session; calls come from worker threads

    def detect(self, rgb: np.ndarray) -> list[Finding]:
        # NudeNet reads files with OpenCV, in BGR order: give it the pixels the same way.
        bgr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., :3][..., ::-1])
        with self._lock:
            found = self._detector.detect(bgr)
        return [Finding(d["class"], float(d["score"])) for d in found]


class CheckerUnavailable(RuntimeError):
    """The configured checker cannot be built here (its message says what to install)."""


def checker_path(name: str) -> str:
    return "serve_app.image_checks:NudeNetChecker" if name == NUDENET else name


@dataclass(frozen=True)
class ImagePolicy:
    """What ``output_policy`` says, validated (``config.OutputPolicyArgs``)."""

    checker: str = NUDENET
    labels: tuple[str, ...] = DEFAULT_LABELS
    threshold: float = 0.5
    uploads: bool = False


class ImageRefused(BadRequest):
    """An upload the check refused; ``labels`` are the ones found."""

    def __init__(self, labels: list[str]):
        super().__init__(f"Image refused by the server's upload check: it found {', '.join(labels)}. "
                         "Send another picture.")
        self.labels = labels


class ImageCheck:
    """The policy with its checker, built on first use (in the thread that first checks)."""

    def __init__(self, policy: ImagePolicy):
        self.policy = policy
        self._checker: Checker | None = None
        self._lock = threading.Lock()

    def load(self) -> Checker:
        """Build the checker now (raises ``CheckerUnavailable`` with a sentence when it cannot be)."""
        with self._lock:
            if self._checker is None:
                try:
                    cls = pkgutil.resolve_name(checker_path(self.policy.checker))
                except (ImportError, AttributeError, ValueError) as exc:
                    raise CheckerUnavailable(f"output_policy.checker {self.policy.checker} cannot be imported "
                                             f"here ({type(exc).__name__})") from None
                self._checker = cls()
            return self._checker

    def found(self, rgb: np.ndarray) -> list[str]:
        """The configured labels the checker found at or above the threshold, sorted, each once."""
        wanted = set(self.policy.labels)
        return sorted({f.label for f in self.load().detect(rgb)
                       if f.label in wanted and f.score >= self.policy.threshold})

    def withheld(self, rgb: np.ndarray) -> str | None:
        """Why a result is withheld (the job's error), or None to store it. Fails closed."""
        try:
            labels = self.found(rgb)
        except Exception as exc:
            log.exception("the output check could not run")
            return f"Result withheld: the output check could not run ({type(exc).__name__}). No image was kept."
        if labels:
            return f"Result withheld by the server's output check: it found {', '.join(labels)}. No image was kept."
        return None

    def check_upload(self, rgb: np.ndarray) -> None:
        """Raise ``ImageRefused`` (400) for an upload with a configured label; 503 when the check
        cannot run (fail closed)."""
        try:
            labels = self.found(rgb)
        except Exception:
            log.exception("the upload check could not run")
            raise ServiceUnavailable("The server's upload check could not run; try again in a few seconds.") \
                from None
        if labels:
            raise ImageRefused(labels)
