"""The teacher's per-location detection confidence, as weights for feature distillation (``score_l2``).

Feature distillers see only feature maps (``MultiTaskOutput.features``); the confidence comes from the teacher's
``DetOutput`` (``MultiTaskOutput.det``), which ``DistillLoss`` passes to ``FeatureDistiller.forward`` as
``t_det``. No adapter interface changes: every ``DetOutput`` already carries the flat view (``obj``, ``cls``) and
its per-level grids in ``raw`` (DESIGN.md §2):

- anchor heads (YOLOv5/YOLOP): ``raw[l]`` is ``[B, na, H_l, W_l, 5 + nc]``; confidence of a location = max over
  its ``na`` anchors of ``sigmoid(obj) * max_c sigmoid(cls_c)`` (the YOLOv5 detection score);
- anchor-free heads (Ultralytics DFL): ``raw["feats"][l]`` is ``[B, 4*reg_max + nc, H_l, W_l]``; confidence =
  ``max_c sigmoid(cls_c)``, as Ultralytics' ``DistillationModel`` computes it for its score-weighted L2.

A feature tap takes the map of the level whose grid equals the tap's ``(H, W)`` (the head inputs ``p3/p4/p5``
match exactly); a tap of another size takes the level with the nearest number of positions, bilinearly resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkd.errors import CompatibilityError
from mtkd.models.outputs import DetOutput


def level_grids(det: DetOutput) -> list[tuple[int, int, int]]:
    """``(na, H_l, W_l)`` per detection level, read from ``det.raw`` (``na = 1`` for anchor-free heads)."""
    raw = det.raw
    if det.kind == "anchor" and isinstance(raw, (list, tuple)) and all(r.dim() == 5 for r in raw):
        grids = [(int(r.shape[1]), int(r.shape[2]), int(r.shape[3])) for r in raw]
    elif det.kind == "anchor_free" and isinstance(raw, dict) and isinstance(raw.get("feats"), (list, tuple)):
        grids = [(1, int(f.shape[-2]), int(f.shape[-1])) for f in raw["feats"]]
    else:
        raise CompatibilityError(
            f"teacher det output ({det.kind!r} head): its per-level grids are not in det.raw (anchor heads: a list "
            "of [B, na, H, W, 5 + nc]; anchor-free heads: a dict with 'feats'), so confidence maps cannot be made"
        )
    if sum(na * h * w for na, h, w in grids) != det.num_anchors:
        raise CompatibilityError(
            f"teacher det output: the level grids {grids} do not add up to its {det.num_anchors} positions"
        )
    return grids


@torch.no_grad()
def confidence_maps(det: DetOutput) -> list[Tensor]:
    """Per level, the teacher's confidence ``[B, H_l, W_l]`` in ``[0, 1]`` (float32, no autograd history)."""
    score = det.cls.detach().float().sigmoid().amax(dim=-1)  # [B, A]
    if det.obj is not None:
        score = score * det.obj.detach().float().sigmoid()
    maps, start = [], 0
    for na, h, w in level_grids(det):
        n = na * h * w
        maps.append(score[:, start : start + n].reshape(-1, na, h, w).amax(dim=1))
        start += n
    return maps


def confidence_at(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The confidence map ``[B, *size]`` for a feature of spatial ``size`` (module docstring for the rule)."""
    for m in maps:
        if tuple(m.shape[-2:]) == tuple(size):
            return m
    area = size[0] * size[1]
    near = min(maps, key=lambda m: abs(m.shape[-2] * m.shape[-1] - area))
    return F.interpolate(near[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
