"""Test-wide setup (offline, quiet Ultralytics with its settings in a temp dir; few threads on 2 cores) and the
shared fixtures of model, loss and pruning tests: tiny synthetic batches and Torch-Pruning-pruned models (cached)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from mtkd.utils.env import configure_offline

configure_offline(os.path.join(tempfile.gettempdir(), "mtkd-tests-ultralytics"))


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for a test of the larger (Ultralytics) models: on the 2 shared cores of CI, 2 threads
    thrash (20x slower) there. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_PRUNED: dict[tuple[str, str], tuple] = {}


def make_batch(b: int = 2, size: int = 64, nc_det: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images with drawn squares; masks with the same squares (class id + 1) and an ignored border strip."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, size, size, generator=g) * 0.2
    masks = torch.zeros(b, size, size, dtype=torch.long)
    masks[:, :, -2:] = 255  # ignored strip
    rows = [(0, 0, (8, 8, 28, 28)), (1, 1, (4, 36, 24, 60)), (1, 2 % nc_det, (34, 6, 58, 30))]
    boxes, labels, bidx = [], [], []
    for i, c, (x1, y1, x2, y2) in rows:
        if i >= b:
            continue
        images[i, c % 3, y1:y2, x1:x2] = 0.9
        masks[i, y1:y2, x1:x2] = c + 1
        boxes.append([x1, y1, x2, y2])
        labels.append(c)
        bidx.append(i)
    return {
        "images": images,
        "masks": masks,
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
        "batch_idx": torch.tensor(bidx, dtype=torch.long),
    }


@pytest.fixture
def batch_factory():
    return make_batch


def prune_model(model, ratio: float = 0.5, size: int = 64):
    """Torch-Pruning MetaPruner, GroupMagnitudeImportance(p=2), ignored layers from ``prune_ignored_layers``."""
    import torch_pruning as tp

    from mtkd.models.yolo_mt import prune_ignored_layers, prune_output_transform

    pruner = tp.pruner.MetaPruner(
        model,
        torch.rand(1, 3, size, size),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=prune_ignored_layers(model),
        output_transform=prune_output_transform,
    )
    pruner.step()
    return model


@pytest.fixture
def pruned_factory():
    """``get(scale, head) -> (unpruned_param_count, pruned_model)``, pruned once per session (ratio 0.5)."""
    from mtkd.models import build_model

    def get(scale: str, head: str):
        key = (scale, head)
        if key not in _PRUNED:
            torch.manual_seed(0)
            model = build_model(f"yolo_mt_{scale}", nc_det=3, nc_seg=4, head=head)
            n0 = sum(p.numel() for p in model.parameters())
            _PRUNED[key] = (n0, prune_model(model))
        return _PRUNED[key]

    return get
