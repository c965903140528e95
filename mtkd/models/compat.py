"""Start-up check that a teacher and a student can be distilled into each other's outputs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from mtkd.errors import CompatibilityError

_PLACEHOLDER = re.compile(r"^class\d+$")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / DataParallel


def _placeholder(names: Sequence[str]) -> bool:
    return all(_PLACEHOLDER.match(str(n)) for n in names)


def _fail(what: str, t: object, s: object) -> CompatibilityError:
    return CompatibilityError(f"teacher/student mismatch: {what}: teacher {t!r} vs student {s!r}")


def check_compatible(
    teacher: nn.Module, student: nn.Module, *, anchor_rtol: float = 1e-3, det: bool = True, seg: bool = True
) -> None:
    """Raise ``CompatibilityError`` naming the first difference that makes logit distillation meaningless.

    Compares the detection heads (``det_spec()``: kind, number of classes, strides, anchors within
    ``anchor_rtol``, DFL ``reg_max``), the segmentation tasks (``seg_tasks``: the same task names, and per task the
    number of classes), and the class names when both models carry real names (placeholder names
    ``class0, class1, ...`` are not compared). Models without a detection (segmentation) head are compatible only
    with models without one too. ``det=False`` / ``seg=False``: that task is not distilled (its KD weight is 0),
    so its heads need not match and are not compared.
    """
    t, s = _unwrap(teacher), _unwrap(student)
    ts, ss = (t.det_spec(), s.det_spec()) if det else (None, None)
    if (ts is None) != (ss is None):
        raise _fail("det head", ts.kind if ts else None, ss.kind if ss else None)
    if ts is not None:
        if ts.kind != ss.kind:
            raise _fail("det head kind", ts.kind, ss.kind)
        if ts.num_classes != ss.num_classes:
            raise _fail("det classes", ts.num_classes, ss.num_classes)
        if tuple(ts.strides) != tuple(ss.strides):
            raise _fail("det strides", tuple(ts.strides), tuple(ss.strides))
        if ts.kind == "anchor":
            ta, sa = ts.anchors or (), ss.anchors or ()
            shape_t = [len(lvl) for lvl in ta]
            shape_s = [len(lvl) for lvl in sa]
            if shape_t != shape_s:
                raise _fail("det anchors per level", shape_t, shape_s)
            for lt, ls in zip(ta, sa):
                for (tw, th), (sw, sh) in zip(lt, ls):
                    if abs(tw - sw) > anchor_rtol * max(abs(tw), 1.0) or abs(th - sh) > anchor_rtol * max(
                        abs(th), 1.0
                    ):
                        raise _fail("det anchors (w, h pixels)", ta, sa)
        if ts.reg_max != ss.reg_max:
            raise _fail("det reg_max (DFL bins)", ts.reg_max, ss.reg_max)
    tt, st = (model_seg_tasks(t), model_seg_tasks(s)) if seg else ({}, {})
    if set(tt) - {"seg"} or set(st) - {"seg"}:  # named seg tasks on either side: compared task by task
        if sorted(tt) != sorted(st):
            raise _fail("seg tasks", list(tt), list(st))
        pairs = [(f"seg task {task!r} ", tt[task], st[task]) for task in tt]
    else:  # single-task (or det-only) models: today's messages
        pairs = [("seg ", tt.get("seg", []), st.get("seg", []))]
    for what, tn, sn in pairs:
        if len(tn) != len(sn):
            raise _fail(f"{what}classes", len(tn), len(sn))
    det_names = [("det ", list(t.det_names), list(s.det_names))] if det else []
    for what, tn, sn in [*det_names, *pairs]:
        if tn and sn and not _placeholder(tn) and not _placeholder(sn) and tn != sn:
            raise _fail(f"{what}class names", tn, sn)


def model_seg_tasks(model: nn.Module) -> dict[str, list[str]]:
    """``model.seg_tasks``, or ``{"seg": seg_names}`` for a model that predates it (``{}`` without seg classes)."""
    tasks = getattr(model, "seg_tasks", None)
    if tasks is None:
        names = list(getattr(model, "seg_names", []))
        return {"seg": names} if names else {}
    return {k: list(v) for k, v in tasks.items()}
