"""convert: refusal of pickles without trust (no code runs), pruned pickles -> safe checkpoints, verification."""

from __future__ import annotations

import pathlib
import pickle
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn

from mtkd.checkpoint import save_checkpoint
from mtkd.cli import run_command
from mtkd.errors import CheckpointError, ConfigError
from mtkd.models import build_model, load_model, model_state
from mtkd.prune.convert import compare_models, convert_file, convert_module, main
from mtkd.prune.prune import prune_model
from mtkd.utils.sniff import scan_file

IMGSZ = 64


class _OpenFile:
    """Unpickling this calls ``open(path, "w")``: creates the file."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _TouchFile:
    """Unpickling this calls ``pathlib.Path.touch(path)``: creates the file."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _model(head: str = "anchor"):
    return build_model("yolo_mt_n", nc_det=3, nc_seg=4, head=head)


def _save(model, path) -> pathlib.Path:
    return save_checkpoint(
        {
            "model": model_state(model),
            "names": {"det": model.det_names, "seg": model.seg_names},
            "config": {},
        },
        path,
    )


@pytest.mark.parametrize(
    "write",
    [
        lambda obj, f: torch.save({"model": obj}, f),  # torch zip archive, protocol 2 (GLOBAL)
        lambda obj, f: torch.save(obj, f, pickle_protocol=4),  # protocol 4 (STACK_GLOBAL)
        lambda obj, f: torch.save(obj, f, _use_new_zipfile_serialization=False),  # legacy torch format
        lambda obj, f: f.write_bytes(pickle.dumps(obj, protocol=5)),  # a bare pickle named .pt
    ],
    ids=["zip", "zip-proto4", "legacy", "raw-pickle"],
)
@pytest.mark.parametrize("payload", [_OpenFile, _TouchFile], ids=["open", "touch"])
def test_malicious_pickle_is_refused_and_never_unpickled(tmp_path, capsys, write, payload):
    victim = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    write(payload(victim), evil)
    assert not victim.exists()

    with pytest.raises(CheckpointError, match="contains pickled Python objects") as err:
        main([str(evil), "--out", str(tmp_path / "safe.pt")])
    msg = str(err.value)
    assert "--trust-pickle" in msg and "arbitrary code" in msg and str(evil) in msg
    assert ("open" in msg) if payload is _OpenFile else ("pathlib.Path" in msg)
    # through the CLI: one line, exit code 2
    assert run_command("convert", [str(evil), "--out", str(tmp_path / "safe.pt")]) == 2
    assert "contains pickled Python objects" in capsys.readouterr().err
    assert not victim.exists()
    assert not (tmp_path / "safe.pt").exists()


def test_sniff_names_ultralytics_and_builtin_classes(tmp_path):
    model = _model()
    torch.save(model, tmp_path / "m.pt")
    scan = scan_file(tmp_path / "m.pt")
    assert scan.container == "zip" and scan.example_class() == "mtkd.models.yolo_mt.YoloMT"
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert scan_file(tmp_path / "sd.pt").unsafe_globals == []
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(CheckpointError, match="not a PyTorch model file"):
        convert_file(tmp_path / "junk.pt", tmp_path / "out.pt")


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
def test_pruned_pickled_model_converts_and_reloads_safely(tmp_path, capsys, head):
    model = prune_model(_model(head), ratio=0.4, imgsz=IMGSZ)
    stem = model.backbone.stem.conv.out_channels
    assert stem < _model(head).backbone.stem.conv.out_channels  # really pruned
    torch.save(model, tmp_path / "pruned.pt")  # what Torch-Pruning's README does

    out = tmp_path / "safe.pt"
    assert (
        main(
            [
                str(tmp_path / "pruned.pt"),
                "--out",
                str(out),
                "--trust-pickle",
                "--verify",
                "--imgsz",
                str(IMGSZ),
            ]
        )
        == 0
    )
    assert "verify OK" in capsys.readouterr().out

    ckpt = torch.load(out, weights_only=True)  # plain data: no pickled modules
    assert ckpt["format"] == "mtkd-checkpoint"
    assert ckpt["model"]["arch"]["layers"]["backbone"]["stem"] == stem
    rebuilt = load_model(out)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    diffs = compare_models(model, rebuilt, imgsz=IMGSZ, seed=3)
    assert diffs and max(diffs.values()) <= 1e-5
    with torch.no_grad():
        a, b = model.eval()(x), rebuilt.eval()(x)
    assert torch.allclose(a.seg, b.seg, atol=1e-5, rtol=0)
    assert torch.allclose(a.det.cls, b.det.cls, atol=1e-5, rtol=0)


def test_verify_failure_exits_1_and_removes_output(tmp_path, monkeypatch, capsys):
    import mtkd.models.build as build

    real = build.load_model

    def perturbed(path, map_location="cpu", **kw):
        m = real(path, map_location, **kw)
        with torch.no_grad():
            m.seg.cls.bias.add_(1e-3)
        return m

    monkeypatch.setattr(build, "load_model", perturbed)
    torch.save(_model(), tmp_path / "m.pt")
    out = tmp_path / "safe.pt"
    assert (
        main([str(tmp_path / "m.pt"), "--out", str(out), "--trust-pickle", "--verify", "--imgsz", str(IMGSZ)])
        == 1
    )
    text = capsys.readouterr().out
    assert "verify FAILED" in text and "seg=0.001" in text
    assert not out.exists()


def test_safe_checkpoint_passes_through(tmp_path, capsys):
    src = _save(_model(), tmp_path / "base.pt")
    assert main([str(src), "--out", str(tmp_path / "copy.pt")]) == 0
    assert (tmp_path / "copy.pt").read_bytes() == src.read_bytes()
    assert "already a safe mtkd checkpoint" in capsys.readouterr().out


def test_plain_state_dict_needs_base(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ConfigError, match="--base"):
        convert_file(tmp_path / "sd.pt", tmp_path / "out.pt")
    base = _save(_model(), tmp_path / "base.pt")  # same architecture, other weights
    res = convert_file(tmp_path / "sd.pt", tmp_path / "out.pt", base=base, verify=True, imgsz=IMGSZ)
    assert res["kind"] == "state_dict"
    assert max(compare_models(model, load_model(tmp_path / "out.pt"), imgsz=IMGSZ).values()) <= 1e-6


def test_torch_pruning_state_dict_applies_pruned_widths_to_base(tmp_path):
    base = _save(_model(), tmp_path / "base.pt")
    pruned = prune_model(load_model(base), ratio=0.5, imgsz=IMGSZ)
    torch.save(tp.state_dict(pruned), tmp_path / "tp.pt")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        convert_file(tmp_path / "tp.pt", tmp_path / "out.pt", base=base)
    with pytest.raises(ConfigError, match="--arch"):
        convert_file(tmp_path / "tp.pt", tmp_path / "out.pt", trust_pickle=True)
    res = convert_file(
        tmp_path / "tp.pt", tmp_path / "out.pt", trust_pickle=True, base=base, verify=True, imgsz=IMGSZ
    )
    rebuilt = load_model(res["out"])
    assert rebuilt.arch()["layers"] == pruned.arch()["layers"]
    assert max(compare_models(pruned, rebuilt, imgsz=IMGSZ).values()) <= 1e-5
    # the model name is enough: class names and widths come from the file
    assert (
        main(
            [
                str(tmp_path / "tp.pt"),
                "--out",
                str(tmp_path / "out2.pt"),
                "--trust-pickle",
                "--arch",
                "yolo_mt_n",
                "--imgsz",
                str(IMGSZ),
            ]
        )
        == 0
    )
    rebuilt2 = load_model(tmp_path / "out2.pt")
    assert rebuilt2.arch() == pruned.arch()
    assert max(compare_models(pruned, rebuilt2, imgsz=IMGSZ).values()) <= 1e-5


def test_class_defined_in_main_gives_clear_error(tmp_path, monkeypatch):
    class C2f_v2(nn.Module):  # noqa: N801 - the name from Torch-Pruning issue #147
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

    C2f_v2.__module__, C2f_v2.__qualname__ = "__main__", "C2f_v2"
    monkeypatch.setattr(sys.modules["__main__"], "C2f_v2", C2f_v2, raising=False)
    torch.save(C2f_v2(), tmp_path / "m.pt")
    monkeypatch.delattr(sys.modules["__main__"], "C2f_v2")
    with pytest.raises(CheckpointError, match="C2f_v2") as err:
        convert_file(tmp_path / "m.pt", tmp_path / "out.pt", trust_pickle=True)
    assert "__main__" in str(err.value) and "--import SCRIPT.py" in str(err.value)


def test_convert_module_rejects_non_adapters(tmp_path):
    with pytest.raises(CheckpointError, match="not a MultiTaskAdapter"):
        convert_module(nn.Conv2d(3, 3, 1), tmp_path / "out.pt")
    res = convert_module(_model("anchor_free"), tmp_path / "out.pt", imgsz=IMGSZ)
    assert res["max_abs_diff"] and max(res["max_abs_diff"].values()) == 0.0


def test_ultralytics_checkpoint_needs_trust_then_converts(tmp_path):
    import copy

    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    net.requires_grad_(False)
    ckpt = {"model": copy.deepcopy(net).half(), "ema": None, "train_args": {}, "date": "2026-11-23"}
    torch.save(ckpt, tmp_path / "yolo.pt")  # the layout Ultralytics writes
    with pytest.raises(CheckpointError, match=r"e\.g\. ultralytics\.nn\.tasks\.DetectionModel"):
        convert_file(tmp_path / "yolo.pt", tmp_path / "out.pt")
    res = convert_file(tmp_path / "yolo.pt", tmp_path / "out.pt", trust_pickle=True, verify=True, imgsz=IMGSZ)
    assert set(res["max_abs_diff"]) == {"det_boxes", "det_scores"}
    rebuilt = load_model(res["out"])
    assert rebuilt.adapter_name == "ultralytics" and rebuilt.nc_det == 2
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
