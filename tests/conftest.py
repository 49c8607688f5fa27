"""Fixtures shared by several test modules (helpers that are plain functions live in tests/helpers)."""

import os

import pytest
import torch

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


def pytest_configure(config):
    """Under pytest-xdist (the default, ``-n 2`` in setup.cfg) each worker shares the machine's cores with the
    other: one torch thread per worker, and the scripts it launches inherit ``OMP_NUM_THREADS=1``. Two
    workers at the default thread count oversubscribe two cores and run many times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


#: The modules that take minutes (compilation, end-to-end runs), longest first: collected before the rest, so
#: that under the ``--dist loadfile`` scheduling each starts early instead of leaving one worker running at
#: the end while the other idles.
LONGEST_MODULES = (
    "test_torch_compile.py",
    "test_workflow_features.py",
    "test_pipelines.py",
    "test_reproduce_easy_vqa.py",
    "test_run_msd.py",
    "test_run_vlm_msd.py",
)


def pytest_collection_modifyitems(config, items):
    """Moves the tests of :data:`LONGEST_MODULES` to the front, in that order (a stable sort: the order
    within a module is kept)."""
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_MODULES)))
