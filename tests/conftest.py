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


@pytest.fixture(scope="session")
def torch_extensions_dir(tmp_path_factory) -> str:
    """A fresh ``TORCH_EXTENSIONS_DIR`` for the DeepSpeed launches of this pytest process (see
    :func:`tests.helpers.launch.deepspeed_launch`): its first launch compiles DeepSpeed's op there."""
    return str(tmp_path_factory.mktemp("torch_extensions"))


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
