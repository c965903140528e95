"""A task whose distillation is off needs no matching teacher head (README promise), and LD is refused where
there are no DFL bins to compare (never a silent 0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtkd.checkpoint import save_model
from mtkd.config import load_config
from mtkd.engine.trainer import Trainer
from mtkd.errors import CompatibilityError, ConfigError
from mtkd.models import build_model

ROOT = Path(__file__).resolve().parents[2]
SEG = ["background", "road", "ellipse", "rectangle", "triangle", "star"]


def _cfg(base_overrides, teacher: Path, *extra: str):
    return load_config(
        ROOT / "configs" / "shapes_distill.yaml", [*base_overrides, f"teacher={teacher}", *extra]
    )


_RUNS = iter(range(1000))


def _first_step(cfg) -> dict:
    trainer = Trainer(cfg.replace(name=f"run{next(_RUNS)}"))  # setup() holds its run folder's lock
    trainer.setup()
    return trainer.run_step(next(iter(trainer.train_loader)), 0, 0)


def test_det_mismatch_blocks_only_while_det_is_distilled(base_overrides, tmp_path):
    other_det = build_model("yolo_mt_n", det_names=["a", "b"], seg_names=SEG)  # 2 det classes, data has 4
    path = save_model(tmp_path / "t.pt", other_det)
    with pytest.raises(CompatibilityError, match=r"det classes \['a', 'b'\] differ"):
        _first_step(_cfg(base_overrides, path))
    for off in ("alpha_det=0", "distill.det_kd.weight=0"):
        terms = _first_step(_cfg(base_overrides, path, off, "distill.feat_kd.names=[]"))
        assert float(terms["det_kd"]) == 0 and float(terms["seg_kd"]) > 0


def test_seg_mismatch_blocks_only_while_seg_is_distilled(base_overrides, tmp_path):
    dets = ["ellipse", "rectangle", "triangle", "star"]
    path = save_model(tmp_path / "t.pt", build_model("yolo_mt_n", det_names=dets, seg_names=["x", "y"]))
    with pytest.raises(CompatibilityError, match=r"seg classes \['x', 'y'\] differ"):
        _first_step(_cfg(base_overrides, path))
    terms = _first_step(_cfg(base_overrides, path, "alpha_seg=0", "distill.feat_kd.names=[]"))
    assert float(terms["seg_kd"]) == 0 and float(terms["det_kd"]) > 0


@pytest.mark.parametrize("head", ["anchor", "anchor_free_one_bin"])
def test_ld_is_refused_without_dfl_bins(base_overrides, tmp_path, head):
    kw = {"head": "anchor_free", "reg_max": 1} if head != "anchor" else {"head": "anchor"}
    dets = ["ellipse", "rectangle", "triangle", "star"]
    path = save_model(tmp_path / "t.pt", build_model("yolo_mt_n", det_names=dets, seg_names=SEG, **kw))
    cfg = _cfg(base_overrides, path, f"head={kw['head']}", "distill.det_kd.ld=true")
    if head != "anchor":
        student = build_model("yolo_mt_n", det_names=dets, seg_names=SEG, **kw)
        cfg = cfg.replace(student=str(save_model(tmp_path / "s.pt", student)))
    with pytest.raises(ConfigError, match=r"distill.det_kd.ld: localization distillation compares DFL bin"):
        _first_step(cfg)
