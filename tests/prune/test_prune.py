"""prune: Torch-Pruning on the built-in family; output layers kept; pruned widths survive a safe checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn

from mtkd.checkpoint import save_checkpoint
from mtkd.cli import run_command
from mtkd.errors import ConfigError
from mtkd.models import build_model, load_model, model_state
from mtkd.models.adapters.base import MultiTaskAdapter
from mtkd.models.outputs import DetOutput, MultiTaskOutput
from mtkd.prune.prune import count_macs_params, main, output_layers, prune_model

IMGSZ = 64


def _model(head: str = "anchor"):
    return build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head)


def _shapes(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.seg.shape, out.det.box.shape, out.det.cls.shape


def _out_widths(model) -> list[int]:
    det = model.det
    convs = list(det.m) if hasattr(det, "m") else [s[-1] for s in det.cv2] + [s[-1] for s in det.cv3]
    return [c.out_channels for c in convs] + [model.seg.cls.out_channels]


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_cli_ratio_half_prunes_channels_and_writes_safe_checkpoint(tmp_path, capsys, head):
    model = _model(head)
    src = save_checkpoint(
        {"model": model_state(model), "names": {}, "config": {"imgsz": IMGSZ}}, tmp_path / "w.pt"
    )
    macs0, params0 = count_macs_params(model, IMGSZ)
    out = tmp_path / "pruned.pt"
    assert main(["--weights", str(src), "--ratio", "0.5", "--out", str(out)]) == 0  # imgsz from the config
    table = capsys.readouterr().out
    assert "before" in table and "after" in table and f"MACs@{IMGSZ}" in table

    pruned = load_model(out)
    macs1, params1 = count_macs_params(pruned, IMGSZ)
    # half of the channels of every prunable layer: weights scale with c_in * c_out -> ~(1 - 0.5)^2 kept;
    # the fixed-width output layers keep a little more
    assert 0.2 < params1 / params0 < 0.33
    assert 0.2 < macs1 / macs0 < 0.33
    stem0, stem1 = model.backbone.stem.conv.out_channels, pruned.backbone.stem.conv.out_channels
    assert stem1 == stem0 // 2
    assert _out_widths(pruned) == _out_widths(model)  # det outputs and seg classes never pruned
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    assert _shapes(pruned, x) == _shapes(model, x)
    record = torch.load(out, weights_only=True)["metrics"]["prune"]
    assert (record["params_before"], record["params_after"]) == (params0, params1)
    assert record["ratio"] == 0.5 and record["importance"] == "magnitude"


@pytest.mark.parametrize(
    ("importance", "global_pruning"), [("bn_scale", False), ("taylor", False), ("magnitude", True)]
)
def test_importances_keep_outputs(importance, global_pruning):
    model = _model()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    shapes, widths = _shapes(model, x), _out_widths(model)
    _, params0 = count_macs_params(model, IMGSZ)
    prune_model(model, ratio=0.3, importance=importance, global_pruning=global_pruning, imgsz=IMGSZ)
    _, params1 = count_macs_params(model, IMGSZ)
    assert params1 < 0.75 * params0
    assert _shapes(model, x) == shapes and _out_widths(model) == widths
    assert all(p.grad is None for p in model.parameters())  # Taylor's backward leaves no gradients behind


def test_target_macs_reached():
    model = _model()
    macs0, _ = count_macs_params(model, IMGSZ)
    prune_model(model, target_macs=0.6 * macs0, imgsz=IMGSZ)
    macs1, _ = count_macs_params(model, IMGSZ)
    assert 0.4 * macs0 < macs1 <= 0.6 * macs0  # small steps: stops soon after crossing the target


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_bad_ratio_is_refused(tmp_path, capsys, ratio):
    src = save_checkpoint({"model": model_state(_model()), "names": {}, "config": {}}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"--ratio: expected a channel pruning ratio in \(0, 1\)"):
        main(["--weights", str(src), "--ratio", ratio, "--out", str(tmp_path / "p.pt")])
    assert (
        run_command("prune", ["--weights", str(src), "--ratio", ratio, "--out", str(tmp_path / "p.pt")]) == 2
    )
    assert "(0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()
    with pytest.raises(ConfigError, match="exactly one"):
        prune_model(_model(), imgsz=IMGSZ)


class _Toy(MultiTaskAdapter):
    """A foreign adapter without ``ignored_layers()``: the generic rule must find its output convs."""

    adapter_name = "toy"

    def __init__(self) -> None:
        super().__init__(det_names=["a", "b"], seg_names=["bg", "fg"])
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.det_out = nn.Conv2d(32, 3 * 7, 1)
        self.seg_mid = nn.Conv2d(32, 16, 3, 1, 1)
        self.seg_out = nn.Conv2d(16, 2, 1)

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        f = self.body(images)
        d = self.det_out(f)
        b, _, h, w = d.shape
        raw = [d.view(b, 3, 7, h, w).permute(0, 1, 3, 4, 2).contiguous()]
        flat = raw[0].flatten(1, 3)
        seg = nn.functional.interpolate(self.seg_out(torch.relu(self.seg_mid(f))), size=images.shape[-2:])
        det = DetOutput(
            raw=raw,
            box=flat[..., :4],
            obj=flat[..., 4],
            cls=flat[..., 5:],
            kind="anchor",
            strides=(4,),
            anchors=torch.ones(1, 3, 2),
        )
        return MultiTaskOutput(seg=seg, det=det)


def test_generic_output_layer_rule_and_pruning_of_foreign_adapter():
    toy = _Toy()
    assert {id(m) for m in output_layers(toy, torch.rand(1, 3, IMGSZ, IMGSZ))} == {
        id(toy.det_out),
        id(toy.seg_out),
    }
    prune_model(toy, ratio=0.5, imgsz=IMGSZ)
    assert toy.det_out.out_channels == 21 and toy.seg_out.out_channels == 2
    assert toy.body[0].out_channels == 8 and toy.seg_mid.out_channels == 8
