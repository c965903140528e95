"""Split-free replacements of Ultralytics' channel-splitting blocks keep the outputs on the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtkd.errors import ConfigError
from mtkd.models import build_model
from mtkd.models.adapters.ultralytics_blocks import (
    SPLIT_FREE_TYPES,
    convertible_paths,
    make_split_free,
    split_free_paths,
)

IMGSZ = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # larger models: tests/conftest.py


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return module


def _blocks():
    from ultralytics.nn.modules import block as b

    return {
        "C2f": lambda: b.C2f(16, 24, n=2, shortcut=True),
        "C3k2": lambda: b.C3k2(16, 32, n=2, c3k=False),
        "C3k2_c3k": lambda: b.C3k2(16, 32, n=1, c3k=True),
        "C3k2_attn": lambda: b.C3k2(32, 32, n=1, c3k=True, attn=True),  # YOLO26's last neck block
        "C2fCIB": lambda: b.C2fCIB(16, 16, n=1, shortcut=True),
        "C2fPSA": lambda: b.C2fPSA(32, 32, n=1),
        "C2": lambda: b.C2(16, 16, n=1),
        "C2PSA": lambda: b.C2PSA(32, 32, n=2),
        "PSA": lambda: b.PSA(32, 32),
    }


@pytest.mark.parametrize("name", list(_blocks()))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_block_replacement_keeps_outputs_and_weights(name, train):
    torch.manual_seed(0)
    holder = nn.Sequential(_randomize(_blocks()[name]()))
    c1 = next(holder[0].parameters()).shape[1]
    x = torch.randn(2, c1, 8, 8)
    holder.train(train)
    with torch.no_grad():
        ref = holder(x)  # train mode: BN uses batch statistics (and updates its running ones)
    before_sd = {k: v.clone() for k, v in holder.state_dict().items()}
    assert make_split_free(holder) == ["0"]
    assert isinstance(holder[0], SPLIT_FREE_TYPES) and holder[0].training == train
    after = {k: v.clone() for k, v in holder.state_dict().items()}
    with torch.no_grad():
        out = holder(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)

    # the state_dict changes only from cv1.* to cv0.* + cv1.* (the two halves), everything else moves unchanged
    w = before_sd["0.cv1.conv.weight"]
    half = w.shape[0] // 2
    assert torch.equal(after["0.cv0.conv.weight"], w[:half]) and torch.equal(
        after["0.cv1.conv.weight"], w[half:]
    )
    assert torch.equal(after["0.cv0.bn.running_var"], before_sd["0.cv1.bn.running_var"][:half])
    moved = {k: v for k, v in before_sd.items() if not k.startswith("0.cv1.")}
    assert all(torch.equal(after[k], v) for k, v in moved.items())
    assert set(after) == set(moved) | {k.replace("0.cv1.", p) for k in before_sd if k.startswith("0.cv1.")
                                       for p in ("0.cv0.", "0.cv1.")}  # fmt: skip


def test_swapped_halves_would_be_caught():
    """The equality test above can fail: the same block with its halves swapped gives other outputs."""
    torch.manual_seed(0)
    holder = nn.Sequential(_randomize(_blocks()["C2f"]())).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        ref = holder(x)
    make_split_free(holder)
    holder[0].cv0, holder[0].cv1 = holder[0].cv1, holder[0].cv0
    with torch.no_grad():
        assert (holder(x) - ref).abs().max() > 1e-3


FAMILIES = {
    "yolov5n.yaml": [],  # C3 blocks never split
    "yolov8n.yaml": ["C2f"] * 8,
    "yolo11n.yaml": ["C3k2"] * 4 + ["C2PSA"] + ["C3k2"] * 4,
    "yolo26n.yaml": ["C3k2"] * 4 + ["C2PSA"] + ["C3k2"] * 4,
    "yolo26n-sem.yaml": ["C3k2"] * 4 + ["C2PSA"] + ["C3k2"] * 2,
}


@pytest.mark.parametrize("yaml", list(FAMILIES))
def test_family_outputs_unchanged_by_split_free_conversion(yaml):
    torch.manual_seed(0)
    nc_det = 0 if "-sem" in yaml else 3
    model = _randomize(build_model({"adapter": "ultralytics", "model": yaml}, nc_det=nc_det, nc_seg=4)).eval()
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    kinds = [type(model.get_submodule(p)).__name__ for p in convertible_paths(model)]
    assert kinds == FAMILIES[yaml]
    with torch.no_grad():
        ref = model.pruning_outputs(x)  # every branch, one-to-one head and aux classifier included
    paths = make_split_free(model)
    assert len(paths) == len(FAMILIES[yaml]) and split_free_paths(model) == paths
    assert convertible_paths(model) == []
    with torch.no_grad():
        out = model.pruning_outputs(x)
    assert len(out) == len(ref) >= 2
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    model.train()
    with torch.no_grad():  # train-mode forward (BN batch statistics) works on the converted model
        assert model(x).seg.shape == (2, 4, IMGSZ, IMGSZ)


def test_make_split_free_refuses_other_paths():
    model = build_model({"adapter": "ultralytics", "model": "yolov8n.yaml"}, nc_det=3, nc_seg=0)
    with pytest.raises(ConfigError, match=r"'model.model.0' is Conv, not a splitting Ultralytics block"):
        make_split_free(model, ["model.model.0"])
    with pytest.raises(ConfigError, match=r"'model.nope' is nothing"):
        make_split_free(model, ["model.nope"])
