"""Unit tests of the engine parts: EMA, LR schedule, param groups, RNG state, results.csv."""

from __future__ import annotations

import copy
import io
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from mtkd.config import OptimConfig
from mtkd.engine.ema import ModelEMA
from mtkd.engine.logger import ResultsCSV, flatten_metrics
from mtkd.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from mtkd.engine.rng import get_rng_state, seed_all, set_rng_state


def test_ema_matches_hand_computation_and_resumes():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert torch.allclose(ema.ema[0].weight, d * w0 + (1 - d) * (w0 + 1.0))
    assert int(ema.ema[1].num_batches_tracked) == 5  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.ema.parameters()) and not ema.ema.training
    other = ModelEMA(model, decay=0.9, tau=2.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.ema[0].weight, ema.ema[0].weight)


def test_lr_warmup_then_cosine():
    kw = {"total": 100, "warmup": 10, "warmup_start": 0.1, "final": 0.01}
    assert lr_factor(0, **kw) == 0.1
    assert math.isclose(lr_factor(5, **kw), 0.1 + 0.9 * 0.5)
    assert lr_factor(10, **kw) == 1.0
    assert math.isclose(lr_factor(55, **kw), 0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert math.isclose(lr_factor(100, **kw), 0.01)
    model = nn.Linear(3, 3)
    cfg = OptimConfig(lr=0.1, warmup_epochs=1.0, warmup_start=0.1, final_lr=0.01)
    opt = build_optimizer([model], cfg)
    sched = build_scheduler(opt, cfg, iters_per_epoch=10, epochs=10)
    assert math.isclose(opt.param_groups[0]["lr"], 0.01)
    for _ in range(10):
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.1)


def test_no_weight_decay_on_biases_and_norms():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    decay, no_decay = param_groups([m, m], 0.05)  # shared modules are counted once
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert isinstance(build_optimizer([m], OptimConfig(optimizer="sgd")), torch.optim.SGD)


def test_rng_state_round_trip_weights_only():
    seed_all(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    draw = (random.random(), random.gauss(0, 1), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(loaded)
    assert draw == (random.random(), random.gauss(0, 1), float(np.random.rand()), float(torch.rand(())))


def test_results_csv_extends_header_and_truncates(tmp_path):
    csv = ResultsCSV(tmp_path / "results.csv")
    csv.append({"epoch": 1, "loss": 1.0})
    csv.append({"epoch": 2, "loss": 0.5, "det/mAP50": 0.25})
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines == ["epoch,loss,det/mAP50", "1,1,", "2,0.5,0.25"]
    again = ResultsCSV(tmp_path / "results.csv")
    again.truncate(1)
    assert (tmp_path / "results.csv").read_text().splitlines() == ["epoch,loss", "1,1"]
    assert flatten_metrics(
        {"det": {"mAP50": 0.5, "per_class_AP50_95": {"a": 1.0}}, "seg": {"mIoU": 0.25}}
    ) == {"det/mAP50": 0.5, "seg/mIoU": 0.25}


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_fused_optimizer_on_cpu_matches_the_per_parameter_loop(kind):
    from mtkd.engine.optim import fused_supported

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    fused_model, start = copy.deepcopy(ref), copy.deepcopy(ref)
    cfg = OptimConfig(optimizer=kind, lr=0.01, momentum=0.9, weight_decay=0.05)
    opt = build_optimizer([fused_model], cfg)
    assert opt.defaults["fused"] is True
    groups = param_groups([ref], cfg.weight_decay)
    if kind == "sgd":
        plain = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, foreach=False)
    else:
        plain = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), foreach=False)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        for model, o in ((ref, plain), (fused_model, opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b, s in zip(ref.parameters(), fused_model.parameters(), start.parameters(), strict=True):
        assert not torch.equal(a, s)  # the steps moved every parameter
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # same update rule, to float rounding
    assert not fused_supported([{"params": []}])
    assert not fused_supported([{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}])
