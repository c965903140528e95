"""Pruning Ultralytics-based multi-task students (YOLOv5u/v8/11/26 + mtkd's seg head) to safe checkpoints, and
converting Torch-Pruning's own ``C2f_v2`` pickles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mtkd.checkpoint import save_model
from mtkd.cli import run_command
from mtkd.errors import CheckpointError, ConfigError
from mtkd.models import build_model, load_model
from mtkd.prune.convert import convert_file
from mtkd.prune.convert import main as convert_main
from mtkd.prune.prune import count_macs_params, main, prune_model

IMGSZ = 64
HERE = Path(__file__).resolve().parent
FAMILIES = ["yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"]


pytestmark = pytest.mark.usefixtures("one_thread")  # larger models: tests/conftest.py


def _model(yaml: str, nc_det: int = 3):
    torch.manual_seed(0)
    return build_model({"adapter": "ultralytics", "model": yaml}, nc_det=nc_det, nc_seg=4)


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model.pruning_outputs(x)


def _fixed_widths(model) -> list[int]:
    """Output widths that must survive pruning: every det/seg output conv and the attention modules' convs."""
    return [
        m.out_channels
        for layer in model.ignored_layers()
        for m in layer.modules()
        if isinstance(m, nn.Conv2d)
    ]


@pytest.mark.parametrize("yaml", FAMILIES)
def test_cli_prunes_family_to_a_safe_checkpoint_that_rebuilds(tmp_path, capsys, yaml):
    model = _model(yaml)
    src = tmp_path / "w.pt"
    save_model(src, model, config={"imgsz": IMGSZ})
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    shapes = [t.shape for t in _outputs(model, x)]
    fixed = _fixed_widths(model)
    _, params0 = count_macs_params(model, IMGSZ)

    out = tmp_path / "pruned.pt"
    assert main(["--weights", str(src), "--ratio", "0.3", "--out", str(out)]) == 0
    assert "after" in capsys.readouterr().out
    ckpt = torch.load(out, weights_only=True)  # plain data
    arch = ckpt["model"]["arch"]
    assert arch["adapter"] == "ultralytics" and arch["widths"]
    assert bool(arch.get("split_free")) == (yaml != "yolov5n.yaml")
    pruned = load_model(out)
    _, params1 = count_macs_params(pruned, IMGSZ)
    assert 0.35 < params1 / params0 < 0.65  # ~(1 - 0.3)^2 of the prunable weights
    assert ckpt["metrics"]["prune"]["params_after"] == params1
    # every branch keeps its output shapes (one-to-one head and seg head included), output widths are fixed
    assert [t.shape for t in _outputs(pruned, x)] == shapes
    assert _fixed_widths(pruned) == fixed
    head = pruned.layers[-1]
    if hasattr(head, "one2one_cv2"):  # YOLO26: the one-to-one branch reads the pruned neck like the main one
        assert [s[0].conv.in_channels for s in head.one2one_cv2] == [s[0].conv.in_channels for s in head.cv2]
        assert not any(p.requires_grad for p in head.one2one_cv2.parameters())  # still frozen


@pytest.mark.parametrize("yaml", ["yolo11n.yaml", "yolo26n-sem.yaml"])
def test_in_process_prune_save_load_is_exact(tmp_path, yaml):
    model = _model(yaml, nc_det=0 if "-sem" in yaml else 3)
    prune_model(model, ratio=0.3, imgsz=IMGSZ, round_to=8)
    for m in model.modules():  # round_to: pruned widths stay multiples of 8 (fixed output layers aside)
        if isinstance(m, nn.Conv2d) and m.out_channels > 8 and m.groups == 1:
            assert m.out_channels % 8 == 0 or m.out_channels in _fixed_widths(model), m
    save_model(tmp_path / "p.pt", model)
    rebuilt = load_model(tmp_path / "p.pt")
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for a, b in zip(_outputs(model, x), _outputs(rebuilt, x), strict=True):
        assert torch.equal(a, b)


def test_target_macs_on_yolo26():
    model = _model("yolo26n.yaml")
    macs0, _ = count_macs_params(model, IMGSZ)
    prune_model(model, target_macs=0.7 * macs0, imgsz=IMGSZ)
    macs1, _ = count_macs_params(model, IMGSZ)
    assert 0.5 * macs0 < macs1 <= 0.7 * macs0


def test_taylor_on_yolo26_uses_and_refreezes_the_one_to_one_branch(tmp_path):
    model = _model("yolo26n.yaml")
    prune_model(model, ratio=0.2, imgsz=IMGSZ, importance="taylor")
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for p in model.layers[-1].one2one_cv3.parameters())  # frozen again
    assert all(p.requires_grad for p in model.layers[-1].cv3.parameters())
    save_model(tmp_path / "p.pt", model)
    assert load_model(tmp_path / "p.pt").arch() == model.arch()


def test_unsupported_splitting_blocks_are_refused_before_any_change(capsys, tmp_path):
    model = build_model({"adapter": "ultralytics", "model": "yolov9t.yaml"}, nc_det=2, nc_seg=0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ConfigError, match=r"^prune: yolov9t.yaml has blocks that split channels.*RepNCSPELAN4"
    ):
        prune_model(model, ratio=0.3, imgsz=IMGSZ)
    assert model.state_dict().keys() == sd.keys() and all(
        torch.equal(v, sd[k]) for k, v in model.state_dict().items()
    )


def test_unmapped_branch_is_refused_with_one_line(tmp_path, capsys, monkeypatch):
    """YOLOP's lane head is not mapped to an output: pruning would cut the channels it reads."""
    monkeypatch.syspath_prepend(str(HERE.parent / "models" / "adapters"))
    config = {
        "adapter": "generic", "target": "mtkd_adapter_toys:YoloPLike", "kwargs": {"nc": 2},
        "outputs": {"det": 0, "seg": 1}, "eval_outputs": {"det": [0, 1]}, "head": "anchor", "strides": [8, 16, 32],
        "anchors": [[3, 9, 5, 11, 4, 20], [7, 18, 6, 39, 12, 31], [19, 50, 38, 81, 68, 157]],
        "seg_activation": "sigmoid",
    }  # fmt: skip
    model = build_model(config, nc_det=2, nc_seg=2)
    with pytest.raises(
        ConfigError, match=r"layers of this GenericAdapter feed none of the outputs.*model\.lane\.0"
    ):
        prune_model(model, ratio=0.3, imgsz=IMGSZ)
    save_model(tmp_path / "w.pt", model, config={"imgsz": IMGSZ})
    args = ["--weights", str(tmp_path / "w.pt"), "--ratio", "0.3", "--out", str(tmp_path / "p.pt")]
    assert run_command("prune", [*args, "--trust-code", "mtkd_adapter_toys:YoloPLike"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.lane.0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.pt").exists()


# ---------------------------------------------------------------------------------------------- C2f_v2 pickles
@pytest.fixture(scope="module")
def tp_pickle(tmp_path_factory) -> Path:
    """Torch-Pruning's YOLOv8 recipe run as a script: the pickle names ``__main__.C2f_v2``."""
    out = tmp_path_factory.mktemp("tp") / "pruned.pt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, str(HERE / "tp_c2f_v2_recipe.py"), str(out), "--ratio", "0.5"],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def test_torch_pruning_c2f_v2_pickle_converts_with_import(tmp_path, capsys, tp_pickle):
    with pytest.raises(
        CheckpointError, match=r"class 'C2f_v2' of module '[a-z.]*__main__'.*--import SCRIPT\.py"
    ):
        convert_file(tp_pickle, tmp_path / "x.pt", trust_pickle=True)
    with pytest.raises(ConfigError, match=r"--import.*needs --trust-pickle"):
        convert_file(tp_pickle, tmp_path / "x.pt", imports=[HERE / "tp_c2f_v2_recipe.py"])
    out = tmp_path / "safe.pt"
    argv = [str(tp_pickle), "--out", str(out), "--trust-pickle", "--verify", "--imgsz", str(IMGSZ),
            "--import", str(HERE / "tp_c2f_v2_recipe.py")]  # fmt: skip
    assert convert_main(argv) == 0
    assert "verify OK" in capsys.readouterr().out
    arch = torch.load(out, weights_only=True)["model"]["arch"]
    assert len(arch["split_free"]) == 8 and arch["widths"]
    model = load_model(out)
    assert model.det_spec().kind == "anchor_free" and model.nc_det == 3
    n_pickle = sum(
        p.numel() for p in torch.load(tp_pickle, weights_only=False, pickle_module=_pickle(argv)).parameters()
    )
    assert sum(p.numel() for p in model.parameters()) == n_pickle < 3.0e6  # pruned (yolov8n: 3.16 M)


def _pickle(argv):
    from mtkd.prune.user_classes import import_user_files, pickle_module

    return pickle_module(import_user_files([argv[-1]]))


def test_eval_of_a_converted_checkpoint_takes_imgsz_from_the_dataset(tmp_path, capsys):
    """A converted/pruned-elsewhere checkpoint has no training config: eval used to run it at 640 px silently."""
    import json

    from mtkd.data.descriptor import load_data_yaml
    from mtkd.data.shapes import make_shapes

    spec = load_data_yaml(make_shapes(tmp_path / "shapes", n_train=1, n_val=2, size=64, seed=1))
    model = build_model(
        {"adapter": "ultralytics", "model": "yolov8n.yaml"},
        det_names=spec.det_names,
        seg_names=spec.seg_names,
    )
    save_model(tmp_path / "w.pt", model)  # config {}
    argv = ["--weights", str(tmp_path / "w.pt"), "--data", str(spec.yaml_path), "--out", str(tmp_path / "m.json"),
            "--workers", "0", "--no-speed"]  # fmt: skip
    assert run_command("eval", argv) == 0
    assert "imgsz 64 (the checkpoint records none" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["data"]["imgsz"] == 64
