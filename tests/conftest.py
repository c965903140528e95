"""Test-wide setup: offline, quiet Ultralytics with its settings in a temp dir; few threads on 2 cores."""

from __future__ import annotations

import os
import tempfile

import pytest

from mtkd.utils.env import configure_offline

configure_offline(os.path.join(tempfile.gettempdir(), "mtkd-tests-ultralytics"))


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield
