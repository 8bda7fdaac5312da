"""Issue 23: the picture check. The policy's rules with a named fake checker, and the real NudeNet
detector (its 320n model ships in the wheel) on a real photo: scikit-image's astronaut, a
public-domain NASA portrait, in which it finds a face."""

import numpy as np
import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs
from serve_app.errors import ServiceUnavailable
from serve_app.image_checks import CheckerUnavailable, Finding, ImageCheck, ImagePolicy, ImageRefused, NudeNetChecker

BLANK = np.zeros((32, 32, 3), np.uint8)


class Fixed:
    """A checker that finds what it is told to (set as a class attribute by each test)."""

    findings: list[Finding] = []

    def detect(self, rgb):
        assert rgb.shape[2] == 3 and rgb.dtype == np.uint8
        return list(self.findings)


class Broken:
    def detect(self, rgb):
        raise RuntimeError("the detector's session died")


def _check(checker, labels=("A", "B"), threshold=0.5):
    return ImageCheck(ImagePolicy(f"{__name__}:{checker}", tuple(labels), threshold))


def test_only_configured_labels_at_or_above_the_threshold_withhold():
    Fixed.findings = [Finding("A", 0.5), Finding("B", 0.49), Finding("C", 0.99), Finding("A", 0.9)]
    check = _check("Fixed")
    assert check.found(BLANK) == ["A"]
    assert check.withheld(BLANK) == "Result withheld by the server's output check: it found A. No image was kept."
    Fixed.findings = [Finding("C", 0.99), Finding("B", 0.2)]
    assert check.withheld(BLANK) is None
    check.check_upload(BLANK)  # passes


def test_an_upload_with_a_label_is_refused_with_400_naming_the_labels():
    Fixed.findings = [Finding("B", 0.8), Finding("A", 0.7)]
    with pytest.raises(ImageRefused) as caught:
        _check("Fixed").check_upload(BLANK)
    assert caught.value.status_code == 400
    assert caught.value.detail == "Image refused by the server's upload check: it found A, B. Send another picture."


def test_a_checker_that_fails_withholds_the_result_and_refuses_the_upload():
    check = _check("Broken")
    assert check.withheld(BLANK) == ("Result withheld: the output check could not run (RuntimeError). "
                                     "No image was kept.")
    with pytest.raises(ServiceUnavailable, match="upload check could not run"):
        check.check_upload(BLANK)


def test_a_checker_that_cannot_be_imported_says_so():
    with pytest.raises(CheckerUnavailable, match="no_such_module:Checker cannot be imported"):
        ImageCheck(ImagePolicy("no_such_module:Checker")).load()


@pytest.mark.parametrize("policy, message", [
    ({"labels": ["FACE_FEMALE", "NAKED"]}, "'NAKED' is not a NudeNet label"),
    ({"labels": []}, "at least 1 item"),
    ({"threshold": 0}, "greater than 0"),
    ({"threshold": 1.5}, "less than or equal to 1"),
    ({"checker": "not a class path"}, "should match pattern"),
    ({"upload": True}, "upload"),
])
def test_wrong_output_policy_keys_are_refused(policy, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"output_policy": policy})


def test_off_by_default_and_on_when_asked():
    assert AppArgs().output_policy.policy() is None
    on = AppArgs.model_validate({"output_policy": {"enabled": True, "labels": ["FACE_FEMALE"], "uploads": True}})
    assert on.output_policy.policy() == ImagePolicy("nudenet", ("FACE_FEMALE",), 0.5, True)


@pytest.fixture(scope="module")
def astronaut():
    skimage = pytest.importorskip("skimage.data")
    return skimage.astronaut()


def test_the_real_detector_finds_the_astronauts_face_and_nothing_in_noise(astronaut):
    pytest.importorskip("nudenet")
    detector = NudeNetChecker()
    labels = {f.label: f.score for f in detector.detect(astronaut)}
    assert labels.get("FACE_FEMALE", 0) >= 0.5, labels
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    check = ImageCheck(ImagePolicy(labels=("FACE_FEMALE",)))
    assert check.withheld(astronaut) == ("Result withheld by the server's output check: it found FACE_FEMALE. "
                                         "No image was kept.")
    assert ImageCheck(ImagePolicy()).withheld(astronaut) is None  # the default labels: nothing exposed here
