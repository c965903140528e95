"""The step's cost on a device: in-place EMA (no ``state_dict()`` per update), one host sync per step, the batch
moved once (pinned memory on CUDA), and the ``channels_last`` / ``compile`` options."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from mtkd_test_syncs import SyncingOps
from torch import nn

import mtkd.engine.task
import mtkd.engine.trainer
from mtkd.config import load_config
from mtkd.engine.ema import ModelEMA
from mtkd.engine.trainer import Trainer
from mtkd.errors import ConfigError


# ---------------------------------------------------------------------------------------------------------- EMA
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("scale", torch.tensor(2.0))  # a float buffer: averaged
        self.register_buffer("scratch", torch.zeros(1), persistent=False)  # not in state_dict: left alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3))) * self.scale


def _old_update(ema: nn.Module, model: nn.Module, d: float) -> None:
    """The EMA update before the in-place rewrite: per state_dict entry, ``mul_(d).add_(src, alpha=1 - d)``."""
    msd = model.state_dict()
    with torch.no_grad():
        for k, v in ema.state_dict().items():
            src = msd[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(src)


def _train_steps(model: nn.Module, n: int, seed: int = 0):
    """Yield after each of ``n`` SGD steps that change weights and BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(n):
        loss = model(torch.randn(4, 3, 8, 8, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "ddp-like"])
def test_ema_equals_old_formula_over_several_steps(wrapped):
    torch.manual_seed(0)
    model = _Net()
    ref = copy.deepcopy(model).eval()
    live = nn.Sequential() if wrapped else model
    if wrapped:  # what unwrap() sees in a DDP wrapper: .module
        live.module = model
    ema = ModelEMA(live, decay=0.999, tau=3.0)
    for u, _ in enumerate(_train_steps(model, 6), start=1):
        ema.update(live)
        _old_update(ref, model, 0.999 * (1 - math.exp(-u / 3.0)))
        got, want = ema.ema.state_dict(), ref.state_dict()
        assert list(got) == list(want)
        for k, v in want.items():
            assert got[k].dtype == v.dtype
            if v.dtype.is_floating_point:
                torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-6, msg=f"update {u}: {k}")
            else:
                assert torch.equal(got[k], v), k
    assert int(ema.ema.bn.num_batches_tracked) == 6
    assert not torch.equal(ema.ema.conv.weight, model.conv.weight)  # averaged, not copied


def test_ema_casts_a_source_of_another_dtype():
    torch.manual_seed(0)
    model = _Net()
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    ema.ema.double()
    ref = copy.deepcopy(ema.ema)
    for u, _ in enumerate(_train_steps(model, 3), start=1):
        ema.update(model)
        _old_update(ref, model, 0.9 * (1 - math.exp(-u / 1.0)))
    for k, v in ref.state_dict().items():
        assert torch.equal(ema.ema.state_dict()[k], v), k


def test_ema_update_does_not_call_state_dict(monkeypatch):
    model = _Net()
    ema = ModelEMA(model)
    calls = []
    real = nn.Module.state_dict

    def counting(self, *a, **kw):
        if isinstance(self, _Net):  # the top-level calls (state_dict recurses into the children)
            calls.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(nn.Module, "state_dict", counting)
    ema.update(model)  # pairs the tensors once: one state_dict of each model
    assert len(calls) == 2 and calls[0] is not calls[1]
    calls.clear()
    for _ in _train_steps(model, 4):
        ema.update(model)
    assert calls == [] and ema.updates == 5
    ema.update(copy.deepcopy(model))  # another model object: paired again
    assert len(calls) == 2


def test_ema_checkpoint_format_is_unchanged_and_resumes():
    torch.manual_seed(0)
    model = _Net()
    a = ModelEMA(model, decay=0.99, tau=2.0)
    steps = _train_steps(model, 4)
    for _ in range(2):
        next(steps)
        a.update(model)
    state = a.state_dict()
    assert set(state) == {"state_dict", "updates"} and state["updates"] == 2
    assert list(state["state_dict"]) == list(model.state_dict())
    b = ModelEMA(model, decay=0.99, tau=2.0)
    b.update(model)  # b has paired its tensors; loading must keep the update in place on b.ema
    b.load_state_dict(copy.deepcopy(state))
    for _ in steps:
        a.update(model)
        b.update(model)
    assert b.updates == a.updates == 4
    for k, v in a.ema.state_dict().items():
        assert torch.equal(b.ema.state_dict()[k], v), k


def test_ema_averages_a_tied_tensor_once():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    model[1].weight = model[0].weight  # the same Parameter under two state_dict names
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # d = 0.5 from the first update
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.ema[0].weight, w0 + 1.0)
    assert ema.ema[1].weight is ema.ema[0].weight


# ------------------------------------------------------------------------------------------ one host sync a step
_SYNCS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__"}


class _DeviceTensor(torch.Tensor):
    """Stands for a tensor on an accelerator: every read of its value on the host is a sync, counted."""

    syncs: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in (*args[1:], *(kwargs or {}).values()))
        if name in _SYNCS or to_cpu:
            cls.syncs.append(name)
            if name in ("cpu", "to"):  # the host copy is a plain tensor: reading it costs nothing more
                with torch._C.DisableTorchFunctionSubclass():
                    return args[0].clone().as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


class _OnDevice:
    """The trainer's task with every term as a ``_DeviceTensor`` (what ``run_step`` gets on CUDA)."""

    def __init__(self, task: nn.Module) -> None:
        self.task = task

    def __call__(self, batch, progress):
        return {k: v.as_subclass(_DeviceTensor) for k, v in self.task(batch, progress).items()}


def test_one_host_sync_per_step_with_hooks(base_overrides):
    cfg = load_config(None, [*base_overrides, "name=syncs", "epochs=1", "batch=1"])
    t = Trainer(cfg)
    try:
        t.setup()
        for h in t.hooks:
            h.before_train()
        t.model = _OnDevice(t.task)
        _DeviceTensor.syncs = []
        for h in t.hooks:
            h.before_epoch()
        means = t.train_one_epoch(0)  # 4 steps: step, meters, progress bar, TensorBoard step scalars
    finally:
        for h in t.hooks:
            h.close()
        t._release_lock()
    assert t.iters == 4 and _DeviceTensor.syncs == ["cpu"] * 4
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in t.last_terms.values())
    assert means["loss"] == pytest.approx(t.meters["loss"] / 4) and math.isfinite(means["loss"])


@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distill"])
def test_a_step_with_the_default_head_reads_one_value_from_the_device(base_overrides, tmp_path, distill):
    """Inside the step too (forward, task and KD losses, backward, optimizer, EMA), not only on the terms: the
    default anchor head's step reads one value, the non-finite flag of the terms' host copy."""
    from mtkd.checkpoint import save_model
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.models import build_model

    extra = ["name=sync_ops", "batch=2"]
    if distill:
        spec = load_data_yaml(base_overrides[0].split("=", 1)[1])
        teacher = build_model("yolo_mt_s", det_names=spec.det_names, seg_names=spec.seg_names)
        extra.append(f"teacher={save_model(tmp_path / 'teacher.pt', teacher)}")
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(
        root / "configs" / "shapes_distill.yaml" if distill else None, [*base_overrides, *extra]
    )
    t = Trainer(cfg)
    try:
        t.setup()
        batch = next(iter(t.train_loader))
        t.run_step(batch, 0, 0)  # warm-up (lazy state)
        with SyncingOps() as mode:
            t.run_step(batch, 0, 1)
    finally:
        t._release_lock()
    assert mode.ops == ["_local_scalar_dense"]


def test_batch_moved_once_non_blocking_and_channels_last(base_overrides, monkeypatch):
    moves = []
    real = torch.Tensor.to

    def to(self, *a, **kw):
        moves.append(kw)
        return real(self, *a, **kw)

    batch = {
        "images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        "masks": torch.zeros(2, 8, 8, dtype=torch.long),
        "paths": ["a", "b"],
    }
    for cl in (False, True):
        t = Trainer(load_config(None, [*base_overrides, f"channels_last={str(cl).lower()}"]))
        t.device = torch.device("cpu")
        moves.clear()
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "to", to)
            out = t.to_device(batch)
        assert len(moves) == 2 and all(kw["non_blocking"] for kw in moves)
        assert out["paths"] == ["a", "b"] and out["masks"].is_contiguous()
        assert out["images"].is_contiguous(memory_format=torch.channels_last) == cl


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_loaders_pin_memory_only_for_cuda(base_overrides, monkeypatch, device):
    import mtkd.data.build

    calls = []

    class Stop(Exception):
        pass

    def fake_build_dataloader(spec, split, **kw):  # records the loaders' arguments, then stops the set-up
        calls.append((split, kw["pin_memory"]))
        if len(calls) == 2:
            raise Stop
        return [None]

    monkeypatch.setattr(mtkd.data.build, "build_dataloader", fake_build_dataloader)
    monkeypatch.setattr(mtkd.engine.trainer.D, "init_distributed", lambda name: torch.device(device))
    with pytest.raises(Stop):
        Trainer(load_config(None, [*base_overrides, f"name=pin-{device}"])).setup()
    assert calls == [("train", device == "cuda"), ("val", device == "cuda")]


# ------------------------------------------------------------------------------------ channels_last and compile
def test_options_default_off_and_parse():
    cfg = load_config(None, [])
    assert cfg.channels_last is False and cfg.compile is False
    cfg = load_config(None, ["channels_last=true", "compile=true"])
    assert cfg.channels_last is True and cfg.compile is True
    assert cfg.to_dict()["compile"] is True


def test_channels_last_training_runs(base_overrides):
    cfg = load_config(None, [*base_overrides, "name=cl", "epochs=1", "channels_last=true"])
    t = Trainer(cfg)
    t.fit()
    convs = [m.weight for m in t.student.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(torch.isfinite(v).all() for v in t.ema.ema.state_dict().values() if v.is_floating_point())
    assert (t.run_dir / "weights" / "last.pt").is_file()


def test_compile_refused_with_one_line_error_where_unsupported(base_overrides, monkeypatch):
    import torch._dynamo.eval_frame as ef

    def unsupported():
        raise RuntimeError("Python 3.99+ not yet supported for torch.compile\nmore detail")

    monkeypatch.setattr(ef, "check_if_dynamo_supported", unsupported)
    cfg = load_config(None, [*base_overrides, "name=nocompile", "compile=true"])
    with pytest.raises(ConfigError) as e:
        Trainer(cfg).setup()
    msg = str(e.value)
    assert msg.startswith("compile: torch.compile is unavailable here (Python 3.99+") and "\n" not in msg
    assert "compile=false" in msg
    assert not (cfg.run_dir / "weights").exists()  # refused before anything was written


def test_compile_needs_a_cpp_compiler_on_cpu(monkeypatch):
    import shutil

    from mtkd.engine.task import check_compile

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^compile: .*no C\+\+ compiler found.*; use compile=false$"):
        check_compile(torch.device("cpu"))


def test_compile_compiles_the_models_in_place_after_the_ema_copy(base_overrides, monkeypatch):
    compiled, calls = [], []

    def fake_compile(fn, **kw):  # no real compilation here: record, count the calls, run eagerly
        compiled.append(fn)

        def run(*a, **k):
            calls.append(fn)
            return fn(*a, **k)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(mtkd.engine.task, "check_compile", lambda device: None)  # CI may lack a C++ compiler
    monkeypatch.setattr(mtkd.engine.trainer, "check_compile", lambda device: None)
    t = Trainer(load_config(None, [*base_overrides, "name=compiled", "epochs=1", "compile=true"]))
    t.fit()
    assert [f.__self__ for f in compiled] == [t.student]  # nn.Module.compile: the student's forward, in place
    assert t.model is t.task and getattr(t.ema.ema, "_compiled_call_impl", None) is None
    assert len(calls) == 2  # the 2 training steps (the EMA is what is evaluated)
    ckpt = torch.load(t.run_dir / "weights" / "last.pt", weights_only=False)
    assert list(ckpt["train"]["model"]) == list(t.student.state_dict())  # no "_orig_mod." in the keys
    assert not any("_orig_mod" in k for k in ckpt["train"]["model"])


@pytest.mark.slow
def test_compile_smoke_eager_backend(monkeypatch):
    """Dynamo traces the student (``backend="eager"``: no code generation, a few seconds on CPU)."""
    import functools

    from mtkd.engine.task import TrainTask
    from mtkd.models import build_model

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch.manual_seed(0)
    student = build_model("yolo_mt_n", nc_det=3, nc_seg=3)
    eager = copy.deepcopy(student)
    TrainTask(student, None, ratio_seg=1.0, ratio_det=1.0).compile_models()
    ema = ModelEMA(student)  # made after compile: runs eagerly
    assert student._compiled_call_impl is not None and ema.ema._compiled_call_impl is None
    x = torch.randn(2, 3, 64, 64)
    out, want = student(x), eager(x)
    assert torch.equal(out.seg, want.seg)
    out.seg.float().mean().backward()
    want.seg.float().mean().backward()
    grads = [(p.grad, q.grad) for p, q in zip(student.parameters(), eager.parameters()) if q.grad is not None]
    assert grads and all(g is not None and torch.allclose(g, h) for g, h in grads)


# ------------------------------------------------------------------------------------------------ the benchmark
def test_benchmark_synchronizes_cuda_around_every_timing(monkeypatch):
    from mtkd.engine import step_timing as B

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    B.time_call(lambda: events.append("work"), cuda)
    assert events == [("sync", cuda), "work", ("sync", cuda)]
    events.clear()
    B.time_call(lambda: events.append("work"), cpu)
    assert events == ["work"]

    class Owner:
        def f(self):
            events.append("f")

    owner, events[:] = Owner(), []
    ph = B.Phases(cuda)
    ph.wrap(owner, "f", "optimizer")
    ph.step(owner.f)
    ph.remove()
    assert events == [("sync", cuda)] * 2 + ["f"] + [("sync", cuda)] * 2
    assert set(ph.steps[0]) == {"optimizer", "other", "total"} and "f" not in vars(owner)
