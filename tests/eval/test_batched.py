"""The batched evaluation path against straightforward per-image references on random model outputs: detections
(decode, threshold, NMS, the host copy in original pixels), class maps at original resolution, and the
segmentation confusion matrix (vs numpy). Each reference is the per-image code evaluation used before."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image

from mtkd.errors import DatasetError
from mtkd.eval import SegmentationEvaluator
from mtkd.eval.batch import Letterbox
from mtkd.eval.outputs import EvalOutputs
from mtkd.models import postprocess
from mtkd.models.heads import DEFAULT_ANCHORS
from mtkd.models.outputs import DetOutput, MultiTaskOutput

STRIDES, NC = (8, 16, 32), 3


def reference_postprocess_det(
    det, img_hw, *, conf=0.001, iou=0.6, max_det=300, agnostic=False, multi_label=False
):
    """The per-image loop (one ``batched_nms`` per image) that ``postprocess_det`` replaced."""
    boxes, scores = postprocess.decode_det(det)
    h, w = int(img_hw[0]), int(img_hw[1])
    out = []
    for bx, sc in zip(boxes.float(), scores.float()):
        if multi_label:
            i, j = (sc > conf).nonzero(as_tuple=True)
            bx, s, lab = bx[i], sc[i, j], j
        else:
            s, lab = sc.max(1)
            keep = s > conf
            bx, s, lab = bx[keep], s[keep], lab[keep]
        if s.numel() > postprocess.MAX_NMS:
            top = s.topk(postprocess.MAX_NMS).indices
            bx, s, lab = bx[top], s[top], lab[top]
        bx = clip_boxes_to_image(bx, (h, w))
        keep = batched_nms(bx, s, torch.zeros_like(lab) if agnostic else lab, iou)[:max_det]
        out.append({"boxes": bx[keep], "scores": s[keep], "labels": lab[keep].long()})
    return out


def reference_seg_to_original(lb: Letterbox, logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Per image: resize to the input, crop the padding, resize to the original, argmax."""
    x = logits[None].float()
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    x = F.interpolate(lb.crop(x), size=(lb.h0, lb.w0), mode="bilinear", align_corners=False)
    return x[0].argmax(0)


def random_anchor_det(b: int, size: int, seed: int) -> DetOutput:
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(b, 3, size // s, size // s, 5 + NC, generator=g) * 2 for s in STRIDES]
    return DetOutput.from_anchor_levels(raw, strides=STRIDES, anchors=torch.tensor(DEFAULT_ANCHORS))


def random_af_det(b: int, size: int, seed: int, reg_max: int = 16) -> DetOutput:
    g = torch.Generator().manual_seed(seed)
    feats = [torch.zeros(b, 4 * reg_max + NC, size // s, size // s) for s in STRIDES]
    a = sum(f.shape[-1] * f.shape[-2] for f in feats)
    raw = {
        "boxes": torch.randn(b, 4 * reg_max, a, generator=g) * 3,
        "scores": torch.randn(b, NC, a, generator=g) * 3 - 2,
        "feats": feats,
    }
    return DetOutput(raw=raw, box=raw["boxes"].transpose(1, 2), obj=None, cls=raw["scores"].transpose(1, 2),
                     kind="anchor_free", strides=STRIDES, reg_max=reg_max)  # fmt: skip


def assert_same_dets(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        for k in ("boxes", "scores", "labels"):
            assert g[k].dtype == r[k].dtype and torch.equal(g[k], r[k]), k


@pytest.mark.parametrize("head", ["anchor", "anchor_free"])
@pytest.mark.parametrize("size", [64, 128])  # 128 px: > 1000 candidates per image (batched_nms per class)
@pytest.mark.parametrize(
    "kw",
    [{}, {"conf": 0.3, "max_det": 20}, {"agnostic": True, "iou": 0.45}, {"multi_label": True, "conf": 0.2}],
)
def test_postprocess_det_equals_per_image_reference(head, size, kw):
    det = (random_anchor_det if head == "anchor" else random_af_det)(4, size, seed=size)
    ref = reference_postprocess_det(det, (size, size), **kw)
    assert sum(len(r["boxes"]) for r in ref) > 10
    assert_same_dets(postprocess.postprocess_det(det, (size, size), **kw), ref)


def test_candidate_cap_per_image_equals_reference(monkeypatch):
    monkeypatch.setattr(postprocess, "MAX_NMS", 50)  # some images over the cap, others under it
    det = random_anchor_det(3, 64, seed=1)
    det.raw[0][1] -= 4  # image 1: few candidates
    for kw in ({"conf": 0.5}, {"conf": 0.05, "multi_label": True}):
        ref = reference_postprocess_det(det, (64, 64), **kw)
        assert_same_dets(postprocess.postprocess_det(det, (64, 64), **kw), ref)


def random_boxes(n: int, b: int, seed: int):
    """Clustered boxes (much overlap) of ``b`` images, grouped by image, distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n // 200 + 1, 2, generator=g) * 200
    xy = centers[torch.randint(0, len(centers), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 3
    wh = 16 + torch.rand(n, 2, generator=g) * 8
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1).clamp(0, 200)
    scores = torch.randperm(n, generator=g).float() / n
    bi = torch.sort(torch.randint(0, b, (n,), generator=g)).values
    return boxes, scores, torch.randint(0, 4, (n,), generator=g), bi


@pytest.mark.parametrize("max_det", [300, 7])
@pytest.mark.parametrize(
    "chunk", [16384, 700, 100]
)  # all images in one call, about two per call, one per call
def test_nms_batched_equals_per_image(max_det, chunk, monkeypatch):
    """The NMS used on CUDA (few calls, float64 coordinate offsets) keeps the same boxes, in the same order."""
    monkeypatch.setattr(postprocess, "NMS_CHUNK", chunk)
    for seed in range(5):
        boxes, scores, groups, bi = random_boxes(2000, 6, seed)
        ref = postprocess.nms_per_image(boxes, scores, groups, bi, 6, 0.5, max_det)
        got = postprocess.nms_batched(boxes, scores, groups, bi, 6, 0.5, max_det)
        assert torch.equal(got, ref) and 6 * max_det >= len(ref) and len(ref) < 1000
    empty = torch.zeros(0, dtype=torch.long)
    assert postprocess.nms_batched(torch.zeros(0, 4), torch.zeros(0), empty, empty, 2, 0.5, 9).numel() == 0


def test_class_map_is_argmax_with_ties_and_nan():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 5, 9, 11), generator=g).float()  # many ties: the first maximal index wins
    x[0, 2, 3, 4] = float("nan")
    x[1, :, 0, 0] = float("nan")
    assert torch.equal(postprocess.class_map(x), x.argmax(1))


def make_batch(letterboxes, masks, seed=0):
    """A loader batch (letterbox keys only) and its raw sources; ``masks`` uint8 ``[H0, W0]`` or ``None``."""
    s = 64
    return {
        "images": torch.zeros(len(letterboxes), 3, s, s),
        "masks": torch.randint(0, 4, (len(letterboxes), s, s), generator=torch.Generator().manual_seed(seed)),
        "orig_sizes": torch.tensor([[lb.h0, lb.w0] for lb in letterboxes]),
        "pads": torch.tensor([[float(lb.top), float(lb.left)] for lb in letterboxes]),
        "scales": torch.tensor([lb.scale for lb in letterboxes]),
        "paths": [f"im{i}.png" for i in range(len(letterboxes))],
        "source": [None if m is None else SimpleNamespace(mask=m) for m in masks],
        "n_real": len(letterboxes),
    }


# letterboxes into 64 px: two images share one (grouped), one is not resized (scale 1), one is upscaled
LETTERBOXES = [
    Letterbox(40, 64, 12, 0, 1.0),
    Letterbox(100, 75, 0, 8, 0.64),
    Letterbox(40, 64, 12, 0, 1.0),
    Letterbox(30, 20, 2, 11, 2.0),
    Letterbox(64, 64, 0, 0, 1.0),
]


@pytest.mark.parametrize("logit_hw", [(64, 64), (16, 16)])
def test_seg_maps_equal_per_image_reference(logit_hw):
    logits = torch.randn(len(LETTERBOXES), 4, *logit_hw, generator=torch.Generator().manual_seed(1))
    batch = make_batch(LETTERBOXES, [None] * 5)
    out = EvalOutputs(MultiTaskOutput(seg=logits, det=None), batch)
    for i in range(len(LETTERBOXES)):
        ref = reference_seg_to_original(Letterbox.from_batch(batch, i), logits[i], (64, 64))
        assert torch.equal(out.seg(i), ref), i
        assert out.det(i)["boxes"].shape == (0, 4)
    ref = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(out.seg_input, ref)


def test_detections_reach_the_host_in_original_pixels():
    det = random_anchor_det(len(LETTERBOXES), 64, seed=3)
    batch = make_batch(LETTERBOXES, [None] * 5)
    out = EvalOutputs(MultiTaskOutput(seg=None, det=det), batch, conf=0.2)
    ref = reference_postprocess_det(det, (64, 64), conf=0.2)
    for i, r in enumerate(ref):
        d = out.det(i)
        assert torch.equal(d["boxes"], Letterbox.from_batch(batch, i).boxes_to_original(r["boxes"]))
        assert torch.equal(d["scores"], r["scores"]) and torch.equal(d["labels"], r["labels"])
        assert d["boxes"].device.type == "cpu" and d["labels"].dtype == torch.int64
    assert out.seg(0) is None


def numpy_confusion(preds, targets, c, ignore):
    p = np.concatenate([np.asarray(x).ravel() for x in preds]).astype(np.int64)
    t = np.concatenate([np.asarray(x).ravel() for x in targets]).astype(np.int64)
    keep = t != ignore
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (t[keep], p[keep]), 1)
    return cm


def test_confusion_of_batches_equals_numpy_reference():
    """``process`` on batches mixing raw masks (original resolution) and batch masks (input resolution)."""
    c, ign = 4, 255
    g = torch.Generator().manual_seed(2)
    ev = SegmentationEvaluator(c, ign)
    preds, targets = [], []
    for k in range(3):
        logits = torch.randn(len(LETTERBOXES), c, 32, 32, generator=g)
        masks = []
        for i, lb in enumerate(LETTERBOXES):
            m = torch.randint(0, c, (lb.h0, lb.w0), generator=g).to(torch.uint8)
            m[torch.rand(lb.h0, lb.w0, generator=g) < 0.2] = ign
            masks.append(None if (i + k) % 4 == 3 else m.numpy())
        batch = make_batch(LETTERBOXES, masks, seed=k)
        batch["n_real"] = 4 if k == 1 else 5  # repeated samples (DDP padding) do not count
        ev.process(batch, EvalOutputs(MultiTaskOutput(seg=logits, det=None), batch))
        for i in range(batch["n_real"]):
            if masks[i] is not None:
                lb = Letterbox.from_batch(batch, i)
                preds.append(reference_seg_to_original(lb, logits[i], (64, 64)).numpy())
                targets.append(masks[i])
            else:
                logit = F.interpolate(logits[i : i + 1], size=(64, 64), mode="bilinear", align_corners=False)
                preds.append(logit.argmax(1)[0].numpy())
                targets.append(batch["masks"][i].numpy())
    ref = numpy_confusion(preds, targets, c, ign)
    assert ev.confusion.tolist() == ref.tolist() and ref.sum() > 10_000


@pytest.mark.parametrize("ignore", [255, 0, -1, 10_000])
def test_add_equals_numpy_reference_for_any_ignore_index(ignore):
    """The bincount fast path and the direct computation (ignore index below 0 or beyond its rows) agree."""
    c = 5
    g = torch.Generator().manual_seed(3)
    ev = SegmentationEvaluator(c, ignore)
    preds, targets = [], []
    for _ in range(3):
        t = torch.randint(0, c, (2, 20, 30), generator=g)
        t[torch.rand(2, 20, 30, generator=g) < 0.15] = ignore
        p = torch.randint(0, c, (2, 20, 30), generator=g)
        ev.add(p, t)
        preds.append(p.numpy())
        targets.append(t.numpy())
    assert ev.confusion.tolist() == numpy_confusion(preds, targets, c, ignore).tolist()


def test_bad_values_raise_as_before():
    ev = SegmentationEvaluator(4, 255)
    t = torch.zeros(3, 3, dtype=torch.long)
    t[1, 1], t[2, 2] = 9, 7
    with pytest.raises(DatasetError, match="mask value 9 is neither a class id"):
        ev.add(torch.zeros(3, 3, dtype=torch.long), t)
    with pytest.raises(DatasetError, match="mask value -2 is neither"):
        ev.add(torch.zeros(1, 2), torch.tensor([[0, -2]]))
    p = torch.zeros(2, 2, dtype=torch.long)
    p[0, 0] = 6  # out of range where the mask is ignored: not counted, not an error
    ev.add(p, torch.tensor([[255, 1], [2, 3]]))
    with pytest.raises(ValueError, match="predicted class ids"):
        ev.add(p, torch.tensor([[0, 1], [2, 3]]))
    assert ev.confusion.sum() == 3
