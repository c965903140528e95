"""``output_map``: probability → logit conversions of seg outputs and output paths into a module's output
(moved here from ``test_generic.py`` with the functions)."""

from __future__ import annotations

import math

import pytest
import torch

from mtkd.errors import ConfigError
from mtkd.models.adapters.output_map import probs_to_logits, select_output


# ------------------------------------------------------------------------------------------ probs_to_logits
def test_probs_to_logits_known_values():
    p = torch.tensor([0.5, 0.75, 0.2]).view(1, 3, 1, 1)
    # multi-channel sigmoid: logit(p) = log(p / (1 - p))
    torch.testing.assert_close(
        probs_to_logits(p, "sigmoid").flatten(), torch.tensor([0.0, math.log(3.0), math.log(0.25)])
    )
    # single-channel sigmoid: two-class logits [log(1 - p), log(p)]
    b = probs_to_logits(torch.full((1, 1, 1, 1), 0.75), "sigmoid").flatten()
    torch.testing.assert_close(b, torch.tensor([math.log(0.25), math.log(0.75)]))
    # softmax: log p
    torch.testing.assert_close(probs_to_logits(p, "softmax").flatten(), p.log().flatten())
    assert probs_to_logits(p, "logits") is p


def test_probs_to_logits_round_trips():
    torch.manual_seed(0)
    sm = torch.softmax(torch.randn(2, 4, 5, 5) * 3, dim=1)
    torch.testing.assert_close(torch.softmax(probs_to_logits(sm, "softmax"), 1), sm, atol=1e-6, rtol=1e-5)
    fg = torch.rand(2, 1, 5, 5) * 0.98 + 0.01
    torch.testing.assert_close(torch.softmax(probs_to_logits(fg, "sigmoid"), 1), torch.cat([1 - fg, fg], 1))
    multi = torch.rand(2, 2, 5, 5) * 0.98 + 0.01
    logits = probs_to_logits(multi, "sigmoid")
    torch.testing.assert_close(torch.sigmoid(logits), multi)
    assert torch.equal(logits.argmax(1), multi.argmax(1))
    # saturated probabilities stay finite (clamped to [eps, 1 - eps])
    edge = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert torch.isfinite(probs_to_logits(edge, "sigmoid")).all()
    assert torch.isfinite(probs_to_logits(edge, "softmax")).all()


def test_probs_to_logits_rejects_unknown_activation():
    with pytest.raises(ConfigError, match=r"generic adapter: field 'seg_activation' = 'tanh'"):
        probs_to_logits(torch.rand(1, 2, 1, 1), "tanh")


# ------------------------------------------------------------------------------------------ select_output
def test_select_output_follows_indices_keys_and_nested_paths():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    out = [a, {"drive": b, "lane": (c,)}]
    assert select_output(out, 0, field="outputs.det") is a
    assert select_output(out, [1, "drive"], field="outputs.seg") is b
    assert select_output(out, [1, "lane", 0], field="outputs.seg") is c
    assert select_output(a, [], field="outputs.seg") is a  # [] = the output itself
    with pytest.raises(
        ConfigError, match=r"'outputs.seg' = \[1, 'road'\]: step 1 \('road'\) not found .*keys \["
    ):
        select_output(out, [1, "road"], field="outputs.seg")
    with pytest.raises(
        ConfigError, match=r"step 0 \(5\) not found in the module output \(a list of 2 items\)"
    ):
        select_output(out, 5, field="outputs.det")
