"""Fixtures for the engine tests: a tiny generated shapes dataset and a base list of overrides."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 train / 2 val images of 64 px (``data.yaml`` path)."""
    from mtkd.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2, size=64, seed=0)


@pytest.fixture
def base_overrides(tiny_data, tmp_path) -> list[str]:
    """Fast settings: yolo_mt_n at 64 px, no workers, TensorBoard off, evaluation only at the last epoch."""
    return [
        f"data={tiny_data}",
        "model=yolo_mt_n",
        "imgsz=64",
        "batch=2",
        "workers=0",
        "device=cpu",
        f"project={tmp_path / 'runs'}",
        "eval_every=1000",
        "tensorboard=false",
        "seed=3",
    ]
