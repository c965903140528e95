"""End-to-end trainer tests on a tiny generated dataset (CPU): files, resume, interrupts, NaN, distillation."""

from __future__ import annotations

import csv
import math
import os
import signal

import pytest
import torch
import yaml

from mtkd.checkpoint import load_checkpoint, save_checkpoint
from mtkd.config import load_config
from mtkd.engine.hooks import HookBase
from mtkd.engine.trainer import Trainer, TrainingInterrupted
from mtkd.errors import ConfigError, MtkdError


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _train(overrides, hooks=()):
    return Trainer(load_config(None, overrides), hooks=hooks).fit()


def test_plain_run_writes_run_dir(base_overrides):
    run = _train(
        [
            *base_overrides,
            "name=plain",
            "epochs=1",
            "batch=4",
            "tensorboard=true",
            "optimizer=sgd",
            "amp=bf16",
        ]
    )
    for f in ("config.yaml", "results.csv", "weights/last.pt", "weights/best.pt"):
        assert (run / f).is_file(), f
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    # the saved config reloads to the same config
    saved = load_config(run / "config.yaml")
    assert (
        saved.to_dict()
        == load_config(
            None,
            [
                *base_overrides,
                "name=plain",
                "epochs=1",
                "batch=4",
                "tensorboard=true",
                "optimizer=sgd",
                "amp=bf16",
            ],
        ).to_dict()
    )
    # checkpoints load with weights_only=True (plain types only), the model rebuilds and runs
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / "weights" / name, weights_only=True)
        assert ckpt["format"] == "mtkd-checkpoint" and ckpt["config"]["epochs"] == 1
    last = load_checkpoint(run / "weights" / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "ema", "rng", "model"} <= set(last["train"])
    assert "optimizer" not in load_checkpoint(run / "weights" / "best.pt")["train"]
    from mtkd.models import load_model

    out = load_model(last)(torch.zeros(1, 3, 64, 64))
    assert out.seg.shape[1] == 6
    (row,) = _rows(run / "results.csv")
    for col in (
        "epoch",
        "loss",
        "seg_loss",
        "det_loss",
        "seg_kd",
        "det_kd",
        "feat_kd",
        "lr",
        "fitness",
        "det/mAP50_95",
        "seg/mIoU",
    ):
        assert col in row, col
    assert float(row["seg_kd"]) == 0.0 and float(row["loss"]) > 0
    # a second run into the same dir is refused unless exist_ok/resume
    with pytest.raises(ConfigError, match="exist_ok=true"):
        _train([*base_overrides, "name=plain", "epochs=1"])


class _Raise(HookBase):
    """Simulate a kill after an epoch (a plain KeyboardInterrupt: no special save)."""

    def __init__(self, after_epoch: int) -> None:
        self.at = after_epoch

    def after_epoch(self) -> None:
        if self.trainer.epoch + 1 == self.at:
            raise KeyboardInterrupt


class _Sigint(HookBase):
    """Send a real SIGINT to this process after ``step`` of ``epoch`` (1-based)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def after_step(self) -> None:
        if (self.trainer.epoch + 1, self.trainer.step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def _state(run):
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=True)
    return ckpt


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


@pytest.fixture
def sigint_handled():
    """SIGINT handled by Python's default handler for the test, also when pytest runs with SIGINT ignored
    (``nohup``, a background job), so a sent SIGINT reaches the trainer; the previous handler is put back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def test_resume_is_bitwise_identical(base_overrides, sigint_handled):
    """4 epochs straight == 2 epochs, kill, resume, Ctrl-C in the middle of epoch 3, resume again."""
    common = [*base_overrides, "epochs=4", "lr=0.01", "warmup_epochs=1"]  # 2 steps per epoch
    ref = _train([*common, "name=ref"])

    with pytest.raises(KeyboardInterrupt):
        _train([*common, "name=cut"], hooks=[_Raise(after_epoch=2)])
    st = _state(ref.parent / "cut")["train"]
    assert (st["epoch"], st["step"]) == (2, 0)
    assert len(_rows(ref.parent / "cut" / "results.csv")) == 2

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="epoch 3 step 1/2"):
        _train([*common, "name=cut", "resume=true"], hooks=[_Sigint(epoch=3, step=1)])
    st = _state(ref.parent / "cut")["train"]
    assert (st["epoch"], st["step"]) == (2, 1)
    assert signal.getsignal(signal.SIGINT) is before  # the handler in effect before fit() is back

    cut = _train([*common, "name=cut", "resume=true"])
    a, b = _state(ref), _state(cut)
    _assert_same_tensors(a["model"]["state_dict"], b["model"]["state_dict"], "ema")
    for key in ("model", "optimizer", "scheduler", "ema"):
        _assert_same_tensors(a["train"][key], b["train"][key], key)
    ra, rb = _rows(ref / "results.csv"), _rows(cut / "results.csv")
    assert [r["epoch"] for r in rb] == ["1", "2", "3", "4"]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k != "time"} == {k: v for k, v in y.items() if k != "time"}

    # resuming a finished run, or with a changed training key, is refused
    with pytest.raises(ConfigError, match="already finished 4"):
        _train([*common, "name=cut", "resume=true"])
    with pytest.raises(ConfigError, match="'optim'"):
        _train([*common, "name=cut", "resume=true", "lr=0.1", "epochs=5"])


class _SeeHandler(HookBase):
    def after_step(self) -> None:
        self.during = signal.getsignal(signal.SIGINT)


def _handler(signum, frame):
    raise AssertionError("the trainer must not call the previous handler")


@pytest.mark.parametrize("previous", [signal.SIG_IGN, _handler], ids=["ignored", "custom"])
def test_fit_restores_the_sigint_handler_it_found(base_overrides, previous):
    """Under nohup / a background job SIGINT is ignored: fit() installs no Ctrl-C handler there (a SIGINT stays
    ignored and the run completes); any other handler is replaced during fit() and put back exactly."""
    saved = signal.signal(signal.SIGINT, previous)
    try:
        see, kick = _SeeHandler(), _Sigint(epoch=1, step=1)
        over = [*base_overrides, "name=sig", "epochs=1", "batch=4", "exist_ok=true"]
        if previous is signal.SIG_IGN:
            try:
                run = _train(over, hooks=[see, kick])  # the SIGINT sent after step 1 is ignored
            except KeyboardInterrupt:
                pytest.fail("fit() installed a Ctrl-C handler although SIGINT was ignored")
            assert see.during is signal.SIG_IGN
            assert load_checkpoint(run / "weights" / "last.pt")["train"]["epoch"] == 1
        else:
            _train(over, hooks=[see])
            assert see.during is not previous and see.during is not signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is previous
    finally:
        signal.signal(signal.SIGINT, saved if saved is not None else signal.default_int_handler)


class _NanAt(HookBase):
    """Make the task loss return NaN for ``det_loss`` at (epoch, step), 1-based."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def before_train(self) -> None:
        t, real = self.trainer, self.trainer.task.task_loss

        def loss(out, batch):
            terms = real(out, batch)
            if (t.epoch + 1, t.step + 1) == self.at:
                terms["det_loss"] = terms["det_loss"] * float("nan")
            return terms

        t.task.task_loss = loss


def test_nan_loss_stops_with_step_and_term(base_overrides):
    over = [*base_overrides, "name=nan", "epochs=3", "batch=4"]  # 1 step per epoch
    with pytest.raises(MtkdError, match=r"epoch 2 step 1 \(global 2\): term 'det_loss' = nan"):
        _train(over, hooks=[_NanAt(epoch=2, step=1)])
    run = load_config(None, over).run_dir
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    assert ckpt["train"]["epoch"] == 1
    for sd in (ckpt["model"]["state_dict"], ckpt["train"]["model"]):
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    assert len(_rows(run / "results.csv")) == 1


def test_checkpoint_refuses_nan_weights(base_overrides):
    class Poison(HookBase):
        def after_step(self) -> None:
            with torch.no_grad():
                next(self.trainer.student.parameters()).fill_(float("nan"))

    with pytest.raises(MtkdError, match="non-finite weights"):
        _train([*base_overrides, "name=poison", "epochs=1", "batch=4", "ema=false"], hooks=[Poison()])
    assert not (load_config(None, base_overrides).run_dir / "poison" / "weights" / "last.pt").exists()


class _CheckTeacher(HookBase):
    def after_step(self) -> None:
        t = self.trainer
        teacher = t.task.teacher
        assert teacher is not None and not teacher.training and t.student.training
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
        # the task (what DDP wraps and the optimizer sees) is student + connectors; the teacher stays outside
        assert not any(m is teacher for m in t.task.modules())
        assert not any(k.startswith("teacher") for k in t.task.state_dict())
        ids = {id(p) for p in teacher.parameters()}
        assert not any(id(p) in ids for g in t.optimizer.param_groups for p in g["params"])
        self.checked = True


def test_distill_logs_terms_and_kd_falls(base_overrides, tmp_path):
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.models import build_model, model_state

    spec = load_data_yaml(base_overrides[0].split("=", 1)[1])
    torch.manual_seed(123)
    teacher = build_model("yolo_mt_n", det_names=spec.det_names, seg_names=spec.seg_names)
    with torch.no_grad():  # an opinionated (if untrained) teacher: input-dependent seg logits (init: zeros)
        teacher.seg.cls.weight.normal_(0.0, 0.5)
    tpath = save_checkpoint(
        {
            "model": model_state(teacher),
            "names": {"det": spec.det_names, "seg": spec.seg_names},
            "config": {},
        },
        tmp_path / "teacher.pt",
    )
    hook = _CheckTeacher()
    run = _train(
        [
            *base_overrides,
            "name=kd",
            f"teacher={tpath}",
            "epochs=4",
            "batch=4",
            "lr=0.002",
            "warmup_epochs=0",
            "augment=false",
            "alpha_seg=1.0",
            "alpha_det=1.0",
            "temperature=1",
            "distill.feat_kd.names=[p3,p4]",
            "distill.feat_kd.kind=fitnet",
            "distill.feat_kd.weight=0.1",
        ],
        hooks=[hook],
    )
    assert hook.checked
    rows = _rows(run / "results.csv")
    for col in (
        "seg_loss",
        "seg_kd",
        "det_loss",
        "det_kd",
        "feat_kd",
        "loss",
        "det_kd_box",
        "det_kd_cls",
        "feat_kd_p3",
        "lr",
        "det/mAP50_95",
        "seg/mIoU",
    ):
        assert col in rows[0], col
    for term in ("seg_kd", "det_kd", "feat_kd"):
        first, last = float(rows[0][term]), float(rows[-1][term])
        assert 0 < last < first, (term, first, last)
    # the student checkpoint holds the student only: same keys/shapes as a fresh student, no teacher/connectors
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    student_sd = build_model("yolo_mt_n", det_names=spec.det_names, seg_names=spec.seg_names).state_dict()
    assert set(ckpt["model"]["state_dict"]) == set(student_sd)
    assert set(ckpt["train"]["model"]) == set(student_sd)
    assert all(k.startswith("feature.") for k in ckpt["train"]["distill"])
    assert ckpt["config"]["teacher"] == str(tpath)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["distill"]["feat_kd"]["names"] == ["p3", "p4"]
