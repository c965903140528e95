"""Torch-Pruning prunes every built-in scale and head kind at ratio 0.5, and ``build_from_arch(pruned.arch())``
+ ``load_state_dict`` rebuilds the pruned model exactly (what safe checkpoints of pruned students rely on)."""

from __future__ import annotations

import json

import pytest
import torch

from mtkd.models import build_from_arch
from mtkd.models.yolo_mt import default_layers

CASES = [(s, h) for s in ("n", "s", "m") for h in ("anchor", "anchor_free")]


@pytest.mark.parametrize(("scale", "head"), CASES)
def test_prune_and_rebuild(scale, head, pruned_factory):
    n0, pruned = pruned_factory(scale, head)
    n1 = sum(p.numel() for p in pruned.parameters())
    assert n1 < 0.5 * n0  # ratio 0.5 on channels removes ~3/4 of the conv weights

    arch = pruned.arch()
    assert json.loads(json.dumps(arch)) == arch  # JSON-like, no tensors or modules
    assert (
        arch["layers"]["backbone"] != default_layers(scale)["backbone"]
    )  # widths read from the live modules
    assert pruned.backbone.csp2.cv1.conv.out_channels == arch["layers"]["backbone"]["csp2"]["cv1"]

    rebuilt = build_from_arch(arch)
    rebuilt.load_state_dict(pruned.state_dict())  # strict: every key and shape matches
    assert rebuilt.arch() == arch
    pruned.eval(), rebuilt.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = pruned(x), rebuilt(x)
    assert a.seg.shape == (2, 4, 64, 64) and torch.equal(a.seg, b.seg)
    assert torch.equal(a.det.box, b.det.box) and torch.equal(a.det.cls, b.det.cls)
    if head == "anchor":
        assert torch.equal(a.det.obj, b.det.obj)


def test_ignored_layers_keep_output_widths(pruned_factory):
    _, pruned = pruned_factory("n", "anchor_free")
    assert [s[-1].out_channels for s in pruned.det.cv2] == [64] * 3  # 4 * reg_max DFL logits
    assert [s[-1].out_channels for s in pruned.det.cv3] == [3] * 3
    assert pruned.seg.cls.out_channels == 4
