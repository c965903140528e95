"""A checkpoint that passes ``torch.load(weights_only=True)`` must not run code when mtkd rebuilds its model.

Two payloads, each a well-formed mtkd checkpoint:
- ``generic``: the arch's import path is ``os:system`` with ``kwargs: {command: "touch MARKER"}``;
- ``ultralytics``: the arch's model YAML has ``activation: "__import__('os').system('touch MARKER') or nn.SiLU()"``,
  which Ultralytics' ``parse_model`` would ``eval()``.
Every command that loads a checkpoint is run on both, in-process through ``mtkd.cli.run_command``: each must fail
with a one-line error, and the marker file must never appear. The legitimate generic path works with the opt-in.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from mtkd.checkpoint import load_checkpoint, save_checkpoint
from mtkd.cli import run_command
from mtkd.errors import CheckpointError, ConfigError
from mtkd.models import build_from_arch, build_model, load_model, model_state

HERE = Path(__file__).resolve().parent
TOYS = HERE / "models" / "adapters"
CONFIG = HERE.parent / "configs" / "shapes_student.yaml"
DISTILL = HERE.parent / "configs" / "shapes_distill.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mtkd.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=2, n_val=2, size=64, seed=0)


def _generic_payload(marker: Path) -> dict:
    return {
        "adapter": "generic",
        "target": "os:system",
        "kwargs": {"command": f"touch {marker}"},
        "outputs": {"seg": 0},
        "seg_activation": "logits",
        "det_names": [],
        "seg_names": ["a", "b"],
    }


def _ultralytics_payload(marker: Path) -> dict:
    model = build_model({"adapter": "ultralytics", "model": "yolov8n.yaml"}, nc_det=3, nc_seg=4)
    arch = copy.deepcopy(model.arch())
    arch["yaml"]["activation"] = f"__import__('os').system('touch {marker}') or nn.SiLU()"
    return {"arch": arch, "state_dict": model_state(model)["state_dict"]}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, data) -> Path:
    """A real 1-epoch run of 2: its last.pt holds a well-formed, resumable training state."""
    project = tmp_path_factory.mktemp("victim_runs")
    rc = run_command(
        "train",
        [
            str(CONFIG),
            f"data={data}",
            "imgsz=64",
            "epochs=2",
            "batch=2",
            "workers=0",
            "tensorboard=false",
            f"project={project}",
            "name=victim",
            "eval_every=1000",
        ],
    )
    assert rc == 0
    ckpt = load_checkpoint(project / "victim" / "weights" / "last.pt")
    ckpt["train"]["epoch"] = 1  # as if stopped after the first of two epochs
    return save_checkpoint(ckpt, project / "victim" / "weights" / "last.pt")


@pytest.fixture(scope="module", params=["generic", "ultralytics"])
def payload(request, tmp_path_factory, real_run) -> tuple[Path, Path]:
    """``(checkpoint path, marker path)``: a real run's last.pt (resumable) whose model is the payload."""
    folder = tmp_path_factory.mktemp(f"payload_{request.param}")
    marker = folder / "PWNED"
    if request.param == "generic":
        model = {"arch": _generic_payload(marker), "state_dict": {}}
    else:
        model = _ultralytics_payload(marker)
    ckpt = {**load_checkpoint(real_run), "model": model}
    run = folder / "runs" / "victim"
    shutil.copytree(real_run.parent.parent, run)
    path = save_checkpoint(ckpt, run / "weights" / "last.pt")
    torch.load(path, weights_only=True)  # the premise: the file is "safe" at the pickle level
    assert not marker.exists()
    return path, marker


def _commands(ckpt: Path, data: Path, out: Path) -> dict[str, list[str]]:
    common = [
        str(CONFIG),
        f"data={data}",
        "imgsz=64",
        "epochs=1",
        "workers=0",
        "batch=2",
        "tensorboard=false",
        f"project={out / 'runs'}",
    ]
    return {
        "eval": [
            "eval",
            "--weights",
            str(ckpt),
            "--data",
            str(data),
            "--no-speed",
            "--quiet",
            "--workers",
            "0",
        ],
        "train_teacher": ["train", *common, "name=t", f"teacher={ckpt}"],
        "train_student": ["train", *common, "name=s", f"student={ckpt}"],
        "train_resume": ["train", str(ckpt.parent.parent / "config.yaml"), f"resume={ckpt}"],
        "prune": ["prune", "--weights", str(ckpt), "--ratio", "0.3", "--out", str(out / "pruned.pt")],
        "export": ["export", "--weights", str(ckpt), "--out", str(out / "model.onnx")],
        "convert": ["convert", str(ckpt), "--out", str(out / "converted.pt")],
        "convert_base": ["convert", str(out / "sd.pt"), "--base", str(ckpt), "--out", str(out / "c2.pt")],
        "benchmark": [
            "benchmark",
            "--config",
            str(DISTILL),
            "--teacher",
            str(ckpt),
            "--out",
            str(out / "b.json"),
            f"data={data}",
            "imgsz=64",
            "batch=2",
            "workers=0",
        ],
    }


@pytest.mark.parametrize(
    "command",
    [
        "eval",
        "train_teacher",
        "train_student",
        "train_resume",
        "prune",
        "export",
        "convert",
        "convert_base",
        "benchmark",
    ],
)
def test_no_command_runs_code_named_by_a_checkpoint(command, payload, data, tmp_path, capsys):
    ckpt, marker = payload
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")  # a plain state_dict for convert --base
    name, *argv = _commands(ckpt, data, tmp_path)[command]
    rc = run_command(name, argv)
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), f"{command} ran code named by the checkpoint"
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(ckpt) in err and ("os:system" in err or "activation" in err), err


def test_report_reads_metrics_without_rebuilding_the_model(payload, tmp_path, capsys):
    """report reads a checkpoint's metrics only: whatever it answers, the payload never runs."""
    ckpt, marker = payload
    run_command("report", [str(ckpt), "--out", str(tmp_path / "report")])
    capsys.readouterr()
    assert not marker.exists()


def test_ultralytics_yaml_fields_are_checked_against_an_allowlist(tmp_path):
    marker = tmp_path / "PWNED"
    arch = _ultralytics_payload(marker)["arch"]
    clean = copy.deepcopy(arch)
    clean["yaml"].pop("activation")
    bad_module = copy.deepcopy(clean)
    bad_module["yaml"]["backbone"][0][2] = "torch_safe_load"  # a function in parse_model's globals
    bad_arg = copy.deepcopy(clean)
    bad_arg["yaml"]["backbone"][0][3] = [{"x": 1}]
    for a, field in ((arch, "activation"), (bad_module, "backbone"), (bad_arg, "backbone")):
        with pytest.raises(ConfigError, match=field):
            build_from_arch(a)
    assert not marker.exists()
    ok = copy.deepcopy(clean)
    ok["yaml"]["activation"] = "nn.LeakyReLU(0.1)"  # a known activation with literal arguments is fine
    assert isinstance(build_from_arch(ok).model.model[0].act, torch.nn.LeakyReLU)


def test_generic_checkpoint_loads_with_the_opt_in_only(tmp_path, monkeypatch, capsys, data):
    monkeypatch.syspath_prepend(str(TOYS))
    target = "mtkd_adapter_toys:AnchorFreeToy"
    model = build_model(
        {
            "adapter": "generic",
            "target": target,
            "kwargs": {"nc": 3, "nc_seg": 3, "reg_max": 4},
            "outputs": {"det": "det", "seg": "seg"},
            "head": "anchor_free",
            "strides": [8, 16, 32],
            "reg_max": 4,
            "seg_activation": "softmax",
        },
        det_names=["circle", "square", "triangle"],
        seg_names=["background", "circle", "square"],
    )
    path = save_checkpoint({"model": model_state(model)}, tmp_path / "generic.pt")
    with pytest.raises(CheckpointError, match=rf"{path}: .*--trust-code {target}"):
        load_model(path)
    with pytest.raises(CheckpointError, match="allowed: other.module:Model"):
        load_model(path, trust_code=["other.module:Model"])
    for trust in ([target], True, ["*"]):
        assert load_model(path, trust_code=trust).arch() == model.arch()
    # the CLI flag: refused without it, converted with it
    assert run_command("convert", [str(path), "--out", str(tmp_path / "c.pt")]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert run_command("convert", [str(path), "--out", str(tmp_path / "c.pt"), "--trust-code", target]) == 0
    assert (tmp_path / "c.pt").is_file()
