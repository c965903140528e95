"""Parsers from a foreign detection head's raw output to ``DetOutput``, recognised by layout.

- ``anchor`` heads (YOLOv5 / YOLOP): per level ``[B, na, H, W, 5 + nc]`` (channels: xywh, objectness, classes)
  or ``[B, na * (5 + nc), H, W]`` maps → ``anchor_det_output``; anchors given per level in input pixels and
  normalised by ``normalize_anchors``.
- ``anchor_free`` heads (Ultralytics / DFL): a dict ``{"boxes": [B, 4*reg_max, A], "scores": [B, nc, A],
  "feats": per-level maps}`` or per-level maps ``[B, 4*reg_max + nc, H, W]`` → ``anchor_free_det_output``.

Every mismatch (level count, channels, positions) is a ``ConfigError`` that names the config field to check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import describe
from mtkd.models.outputs import DetOutput


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _anchor_level(level: Any) -> list[list[float]] | None:
    """One level, flat ``[w, h, w, h, ...]`` or nested ``[[w, h], ...]`` (not mixed) → ``[na][2]``, or ``None``."""
    if isinstance(level, (str, bytes)) or not isinstance(level, Sequence) or not level:
        return None
    if all(_is_number(v) for v in level):
        flat = [float(v) for v in level]
        return [flat[i : i + 2] for i in range(0, len(flat), 2)] if len(flat) % 2 == 0 else None
    ok = all(
        isinstance(p, Sequence)
        and not isinstance(p, (str, bytes))
        and len(p) == 2
        and all(map(_is_number, p))
        for p in level
    )
    return [[float(w), float(h)] for w, h in level] if ok else None


def normalize_anchors(anchors: Any, n_levels: int, *, where: str) -> list[list[list[float]]]:
    """The one anchor parser of every adapter (``native``, ``generic``): YOLOv5-style flat lists per level
    ``[[w,h, w,h, ...], ...]`` or nested pairs ``[[[w,h], ...], ...]`` → ``[nl][na][2]`` floats, the internal form
    (and the form written to an arch). The same number of anchors on every level, ``n_levels`` levels (as
    ``strides``), finite sizes > 0 in input pixels; anything else is a one-line ``ConfigError`` naming ``'anchors'``.
    """
    bad = ConfigError(
        f"{where}: field 'anchors' = {anchors!r}; expected one list per level ({n_levels} levels, as "
        f"'strides') of positive (w, h) sizes in input pixels, flat like YOLOv5's [[10,13, 16,30, 33,23], ...] "
        f"or nested [[[10, 13], [16, 30], [33, 23]], ...]"
    )
    if isinstance(anchors, (str, bytes)) or not isinstance(anchors, Sequence) or len(anchors) != n_levels:
        raise bad
    out = [_anchor_level(level) for level in anchors]
    if any(level is None for level in out) or len({len(level) for level in out}) != 1:
        raise bad
    if any(v <= 0 for level in out for pair in level for v in pair):
        raise bad
    return out


def as_levels(raw: Any, *, n_levels: int, where: str) -> list[Tensor]:
    """``raw`` as a list of ``n_levels`` per-level tensors; ``ConfigError`` otherwise."""
    if not isinstance(raw, (list, tuple)) or not all(isinstance(t, Tensor) for t in raw):
        raise ConfigError(
            f"{where} selects {describe(raw)}; expected a list of per-level tensors (heads that return "
            f"(decoded, raw) in eval mode, like YOLOv5/YOLOP's, need 'eval_outputs', e.g. {{det: [0, 1]}})"
        )
    if len(raw) != n_levels:
        raise ConfigError(f"{where} has {len(raw)} levels but 'strides' lists {n_levels}")
    return list(raw)


def anchor_det_output(raw: Any, *, strides: Sequence[int], anchors: Tensor, nc: int, where: str) -> DetOutput:
    """``DetOutput`` of a YOLOv5/YOLOP anchor head.

    raw: per level ``[B, na, H, W, 5 + nc]`` or ``[B, na * (5 + nc), H, W]`` (channels: xywh, obj, classes);
    anchors: ``[nl, na, 2]`` pixels. ``DetOutput.raw`` is always the 5-D per-level list; the flat view is
    ``box [B, A, 4]``, ``obj [B, A]``, ``cls [B, A, nc]`` with ``A = sum(na * H * W)`` (level, anchor, y, x order).
    """
    na, no = int(anchors.shape[1]), 5 + nc
    levels = []
    for i, t in enumerate(as_levels(raw, n_levels=len(strides), where=where)):
        if t.ndim == 4 and t.shape[1] == na * no:
            b, _, h, w = t.shape
            t = t.view(b, na, no, h, w).permute(0, 1, 3, 4, 2)
        if t.ndim != 5 or t.shape[1] != na or t.shape[-1] != no:
            raise ConfigError(
                f"{where}: level {i} has shape {list(t.shape)}; expected [B, na={na}, H, W, 5 + nc_det={no}] "
                f"or [B, na * (5 + nc_det)={na * no}, H, W] (check 'anchors' and det_names)"
            )
        levels.append(t)
    return DetOutput.from_anchor_levels(levels, strides=tuple(strides), anchors=anchors)


def anchor_free_det_output(
    raw: Any, *, strides: Sequence[int], reg_max: int, nc: int, where: str
) -> DetOutput:
    """``DetOutput`` of an Ultralytics-style anchor-free (DFL) head.

    raw: dict ``{"boxes": [B, 4*reg_max, A], "scores": [B, nc, A], "feats": per-level maps}`` or per-level maps
    ``[B, 4*reg_max + nc, H, W]``. View: ``box [B, A, 4*reg_max]``, ``obj None``, ``cls [B, A, nc]``.
    """
    nb = 4 * reg_max
    if not isinstance(raw, Mapping):
        maps = as_levels(raw, n_levels=len(strides), where=where)
        for i, m in enumerate(maps):
            if m.ndim != 4 or m.shape[1] != nb + nc:
                raise ConfigError(f"{where}: level {i} has shape {list(m.shape)}; expected [B, 4*reg_max + nc_det="
                                  f"{nb + nc}, H, W]")  # fmt: skip
        b = maps[0].shape[0]
        raw = {"boxes": torch.cat([m[:, :nb].reshape(b, nb, -1) for m in maps], 2),
               "scores": torch.cat([m[:, nb:].reshape(b, nc, -1) for m in maps], 2), "feats": maps}  # fmt: skip
    boxes, scores, feats = raw.get("boxes"), raw.get("scores"), raw.get("feats")
    if not all(isinstance(t, Tensor) for t in (boxes, scores)) or not isinstance(feats, (list, tuple)):
        raise ConfigError(
            f"{where}: expected a dict with 'boxes', 'scores' and 'feats' (per-level maps), got {list(raw)}"
        )
    if boxes.ndim != 3 or boxes.shape[1] != nb or scores.ndim != 3 or scores.shape[1] != nc:
        raise ConfigError(
            f"{where}: boxes {list(boxes.shape)} / scores {list(scores.shape)}; expected [B, 4*reg_max={nb}, A] "
            f"and [B, nc_det={nc}, A] (check 'reg_max' and det_names)"
        )
    if len(feats) != len(strides) or boxes.shape[-1] != sum(f.shape[-2] * f.shape[-1] for f in feats):
        raise ConfigError(
            f"{where}: 'feats' ({len(feats)} levels) does not add up to A={boxes.shape[-1]} positions"
        )
    return DetOutput.from_anchor_free(dict(raw), strides=tuple(strides), reg_max=reg_max)
