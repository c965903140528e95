"""``det_layouts``: foreign detection-head outputs parsed into ``DetOutput`` (anchor and anchor-free layouts)."""

from __future__ import annotations

import pytest
import torch

from mtkd.errors import ConfigError
from mtkd.models.adapters.det_layouts import anchor_free_det_output, normalize_anchors

STRIDES = (8, 16, 32)


def test_normalize_anchors_flat_and_nested_agree_and_bad_ones_name_the_field():
    flat = [[3, 9, 5, 11], [7, 18, 6, 39], [19, 50, 38, 81]]
    nested = [[[3, 9], [5, 11]], [[7, 18], [6, 39]], [[19, 50], [38, 81]]]
    assert normalize_anchors(flat, 3, where="w") == normalize_anchors(nested, 3, where="w")
    assert normalize_anchors(flat, 3, where="w")[2][1] == [38.0, 81.0]
    for bad in ([[3, 9, 5]] * 3, flat[:2], [[3, 9], [5, 11, 4, 20], [1, 2]], "3,9"):
        with pytest.raises(ConfigError, match=r"^w: field 'anchors'"):
            normalize_anchors(bad, 3, where="w")


def test_anchor_free_maps_and_dict_layouts_agree():
    """Per-level maps ``[B, 4*reg_max + nc, H, W]`` give the same view as the Ultralytics dict they are cut into."""
    torch.manual_seed(0)
    reg_max, nc = 4, 3
    maps = [torch.randn(2, 4 * reg_max + nc, s, s) for s in (8, 4, 2)]
    from_maps = anchor_free_det_output(maps, strides=STRIDES, reg_max=reg_max, nc=nc, where="t")
    raw = {
        "boxes": torch.cat([m[:, :16].flatten(2) for m in maps], 2),
        "scores": torch.cat([m[:, 16:].flatten(2) for m in maps], 2),
        "feats": maps,
    }
    from_dict = anchor_free_det_output(raw, strides=STRIDES, reg_max=reg_max, nc=nc, where="t")
    assert from_maps.box.shape == (2, 84, 16) and from_maps.cls.shape == (2, 84, 3) and from_maps.obj is None
    assert torch.equal(from_maps.box, from_dict.box) and torch.equal(from_maps.cls, from_dict.cls)
    # position 64 + 2*4 + 1 = level 1, y 2, x 1
    assert torch.equal(from_maps.cls[:, 64 + 2 * 4 + 1], maps[1][:, 16:, 2, 1])


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            torch.zeros(1, 19, 8, 8),
            r"t selects a tensor of shape \[1, 19, 8, 8\]; expected a list of per-level",
        ),
        ([torch.zeros(1, 19, 8, 8)] * 2, r"t has 2 levels but 'strides' lists 3"),
        (
            [torch.zeros(1, 20, 8, 8)] * 3,
            r"level 0 has shape \[1, 20, 8, 8\]; expected \[B, 4\*reg_max \+ nc_det=19",
        ),
        ({"boxes": torch.zeros(1, 16, 84)}, r"expected a dict with 'boxes', 'scores' and 'feats'"),
    ],
)
def test_anchor_free_layout_errors(raw, match):
    with pytest.raises(ConfigError, match=match):
        anchor_free_det_output(raw, strides=STRIDES, reg_max=4, nc=3, where="t")
