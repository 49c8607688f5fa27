"""Fixtures shared by several test modules (helpers that are plain functions live in tests/helpers)."""

import pytest

from tests.helpers.hub_server import LocalHub
from tests.helpers.models import tiny_processor


@pytest.fixture(scope="session")
def processor(tmp_path_factory):
    """The tiny text+image processor of :func:`tests.helpers.models.tiny_model` (read-only: shared)."""
    return tiny_processor(tmp_path_factory.mktemp("processor"))


@pytest.fixture
def hub():
    """A local stand-in for the Hugging Face Hub (tests/helpers/hub_server.py), serving for one test."""
    with LocalHub() as server:
        yield server
