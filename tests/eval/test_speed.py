"""Speed/size helpers on a tiny conv net with hand-computed FLOPs and parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtkd.eval.speed import count_flops, count_params, file_size_mb, measure_latency, measure_throughput


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False)
    )


def test_params_and_flops_by_hand():
    m = tiny()
    assert count_params(m) == (3 * 8 * 9 + 8) + 2 * 8 + 8 * 4
    m[0].weight.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 8 + 2 * 8 + 8 * 4
    h, w = 32, 48
    macs = h * w * 8 * 3 * 9 + h * w * 4 * 8  # conv MACs; bias/BN/ReLU are not counted by FlopCounterMode
    assert count_flops(m, (h, w)) == 2 * macs
    assert count_flops(m, 32, batch=2) == 2 * 2 * (32 * 32 * 8 * 27 + 32 * 32 * 32)


def test_latency_and_throughput_records_setup():
    m = tiny().train()
    lat = measure_latency(m, 32, device="cpu", warmup=1, iters=5)
    assert lat["device"] == "cpu" and lat["batch"] == 1 and lat["imgsz"] == 32
    assert lat["threads"] == torch.get_num_threads()
    assert 0 < lat["latency_ms_p50"] <= lat["latency_ms_p90"]
    thr = measure_throughput(m, (32, 64), batch=4, warmup=1, iters=3)
    assert thr["throughput_batch"] == 4 and thr["throughput_ips"] > 0
    assert m.training  # mode restored
    with pytest.raises(ValueError):
        measure_latency(m, 32, iters=0)


def test_file_size(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"\0" * 3 * 2**20)
    assert file_size_mb(f) == 3.0
