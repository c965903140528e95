"""Teacher/student compatibility check: a matching pair passes, each kind of mismatch is named."""

from __future__ import annotations

import pytest

from mtkd.errors import CompatibilityError
from mtkd.models import build_model, check_compatible

DET, SEG = ["circle", "square", "triangle"], ["background", "circle", "square", "triangle"]


def model(scale="n", head="anchor", det=DET, seg=SEG, **kw):
    return build_model(f"yolo_mt_{scale}", head=head, det_names=det, seg_names=seg, **kw)


def test_compatible_pair_passes():
    check_compatible(model("s"), model("n"))  # different widths/depths are fine
    check_compatible(model("s", "anchor_free"), model("n", "anchor_free"))
    check_compatible(model(det=None, nc_det=3, seg=None, nc_seg=4), model())  # placeholder names not compared


@pytest.mark.parametrize(
    ("student", "words"),
    [
        (dict(head="anchor_free"), ["det head kind", "'anchor'", "'anchor_free'"]),
        (dict(det=["a", "b"]), ["det classes", "3", "2"]),
        (dict(seg=["bg", "x"]), ["seg classes", "4", "2"]),
        (dict(det=["square", "circle", "triangle"]), ["det class names", "square"]),
        (dict(anchors=[[[3, 4]] * 3] * 3), ["det anchors"]),
    ],
)
def test_mismatch_is_named(student, words):
    with pytest.raises(CompatibilityError) as e:
        check_compatible(model("s"), model(**student))
    msg = str(e.value)
    assert msg.startswith("teacher/student mismatch: ")
    for w in words:
        assert w in msg


def test_reg_max_mismatch():
    with pytest.raises(CompatibilityError, match="reg_max"):
        check_compatible(model(head="anchor_free"), model(head="anchor_free", reg_max=8))
