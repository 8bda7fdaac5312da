"""Fixtures of the unit tests that run the engine on the tiny model (test_pipeline, test_previews):
each module gets its own engine, so no module depends on what another left loaded."""

import pytest

from serve_app.presets import build_registry
from serve_app.worker.engine import EditEngine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return EditEngine(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def tiny():
    return build_registry({"tiny": {"resolution": 256}})["tiny"]
