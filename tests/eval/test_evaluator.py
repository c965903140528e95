"""The evaluator protocol: the combinator merges results and refuses colliding keys; the driver hands every
evaluator the same ``(batch, outputs)`` (letterbox undone, DDP repeats excluded); sample overlays are one more
evaluator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtkd.eval import DatasetEvaluator, DatasetEvaluators, SampleOverlayEvaluator
from mtkd.eval.evaluate import inference_on_dataset

postprocess = pytest.importorskip(
    "mtkd.models.postprocess", reason="models (mtkd.models.postprocess) not written yet"
)
from mtkd.models.outputs import MultiTaskOutput  # noqa: E402


class Const(DatasetEvaluator):
    def __init__(self, result):
        self.result, self.calls = result, []

    def reset(self):
        self.calls.append("reset")

    def process(self, batch, outputs):
        self.calls.append("process")

    def evaluate(self):
        self.calls.append("evaluate")
        return self.result


def test_combinator_merges_in_order_and_refuses_colliding_keys():
    a, b, c = Const({"det": {"mAP50": 0.5}}), Const({}), Const({"seg": {"mIoU": 0.25}})
    both = DatasetEvaluators([a, b, c])
    both.reset()
    both.process({}, None)
    assert both.evaluate() == {"det": {"mAP50": 0.5}, "seg": {"mIoU": 0.25}}
    assert list(both.evaluate()) == ["det", "seg"]
    assert a.calls[:3] == b.calls[:3] == c.calls[:3] == ["reset", "process", "evaluate"]
    clash = DatasetEvaluators([a, Const({"data": {}}), Const({"det": {"mAP50": 0.9}})])
    with pytest.raises(ValueError, match=r"Const and Const both return the key 'det'"):
        clash.evaluate()
    with pytest.raises(NotImplementedError):
        DatasetEvaluator().process({}, None)
    assert DatasetEvaluator().evaluate() == {}


# two batches of 2 letterboxed 32x32 images: 16x32 originals scaled by 1 with 8 px padding on top
def make_batch(k):
    b = 2
    return {
        "images": torch.rand(b, 3, 32, 32), "masks": torch.full((b, 32, 32), 255, dtype=torch.long),
        "boxes": torch.tensor([[4.0, 10, 20, 20]]), "labels": torch.tensor([1]), "batch_idx": torch.tensor([0]),
        "paths": [f"/d/im{2 * k + i}.png" for i in range(b)], "orig_sizes": torch.tensor([[16, 32]] * b),
        "pads": torch.tensor([[8.0, 0.0]] * b), "scales": torch.ones(b),
    }  # fmt: skip


class Boxes(nn.Module):
    """One box per image at input pixels (4, 10, 20, 20) and constant seg logits favouring class 1."""

    nc_det, nc_seg = 2, 3

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        b = len(x)
        det = [{"boxes": torch.tensor([[4.0, 10, 20, 20]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1])} for _ in range(b)]  # fmt: skip
        seg = torch.zeros(b, 3, 16, 16)
        seg[:, 1] = 1
        return MultiTaskOutput(seg=seg, det=det)


class Recorder(DatasetEvaluator):
    def __init__(self):
        self.seen = []

    def process(self, batch, outputs):
        for i in range(batch["n_real"]):
            assert batch["source"][i] is None  # a list of batches has no raw source
            self.seen.append((batch["paths"][i], outputs.det(i)["boxes"].tolist(), tuple(outputs.seg(i).shape),
                              tuple(outputs.seg_input[i].shape)))  # fmt: skip

    def evaluate(self):
        return {"recorded": len(self.seen)}


def test_driver_feeds_every_evaluator_the_same_views(monkeypatch, tmp_path):
    monkeypatch.setattr(postprocess, "postprocess_det", lambda det, hw, **kw: det)
    model = Boxes().train()
    rec = Recorder()
    overlays = SampleOverlayEvaluator(tmp_path / "samples", 3, det_names=["a", "b"])
    res = inference_on_dataset(model, [make_batch(0), make_batch(1)], DatasetEvaluators([rec, overlays]),
                               progress=False)  # fmt: skip
    assert res == {"recorded": 4} and model.training
    # boxes in original pixels (top padding 8 removed), class maps at original (16x32) and input (32x32) size
    assert rec.seen[0] == ("/d/im0.png", [[4.0, 2.0, 20.0, 12.0]], (16, 32), (32, 32))
    assert [r[0] for r in rec.seen] == [f"/d/im{i}.png" for i in range(4)]
    # sample overlays: the first 3 images only, ground truth and prediction each
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["im0.png", "im0_gt.png", "im1.png", "im1_gt.png", "im2.png", "im2_gt.png"]
    assert (tmp_path / "samples" / "im0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
