"""evaluate_model end to end: an oracle model on a tiny non-square dataset must score exactly 1.0 after the
predictions are mapped back from the letterboxed input to the original images; plus the DDP sharding rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

build = pytest.importorskip("mtkd.data.build", reason="data layer (mtkd.data.build) not written yet")
descriptor = pytest.importorskip("mtkd.data.descriptor", reason="data layer not written yet")
postprocess = pytest.importorskip(
    "mtkd.models.postprocess", reason="models (mtkd.models.postprocess) not written yet"
)

from mtkd.data.collate import collate, images_to_float  # noqa: E402
from mtkd.eval.batch import real_count  # noqa: E402
from mtkd.eval.evaluate import evaluate_model, fitness  # noqa: E402
from mtkd.models.outputs import MultiTaskOutput  # noqa: E402

DET, SEG = ["a", "b"], ["bg", "a", "b"]
# (H, W, [(class, x1, y1, x2, y2)]): letterboxed into 64 px with padding on top/bottom or left/right
IMAGES = [(40, 64, [(0, 4, 4, 20, 30), (1, 30, 10, 60, 38)]), (64, 48, [(1, 5, 6, 40, 50)]), (64, 64, [])]


def write_dataset(root):
    from PIL import Image

    for sub in ("images", "labels", "masks"):
        (root / sub / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w, boxes) in enumerate(IMAGES):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        lines = []
        for c, x1, y1, x2, y2 in boxes:
            mask[y1:y2, x1:x2] = c + 1
            lines.append(
                f"{c} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}\n"
            )
        mask[:3, :3] = 255  # unlabeled
        Image.fromarray(img).save(root / "images" / "val" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / "val" / f"im{i}.png")
        (root / "labels" / "val" / f"im{i}.txt").write_text("".join(lines))
    (root / "data.yaml").write_text(
        f"path: .\nformat: yolo_mask\nval: val\ndet_names: {DET}\nseg_names: {SEG}\nignore_index: 255\n"
    )
    return root / "data.yaml"


class Oracle(nn.Module):
    """Returns the (letterboxed) ground truth of each input image: one-hot seg logits and GT boxes."""

    nc_det, nc_seg = len(DET), len(SEG)

    def __init__(self, loader):
        super().__init__()
        self.table = {}
        for b in loader:
            for i, img in enumerate(b["images"]):
                sel = b["batch_idx"] == i
                key = (
                    images_to_float(img).numpy().tobytes()
                )  # what the driver hands the model: float32 in [0, 1]
                self.table[key] = (b["masks"][i].long(), b["boxes"][sel], b["labels"][sel])

    def forward(self, images):
        gts = [self.table[img.numpy().tobytes()] for img in images]
        masks = torch.stack([m.masked_fill(m == 255, 0) for m, _, _ in gts])
        logits = F.one_hot(masks, len(SEG)).permute(0, 3, 1, 2).float()
        det = [{"boxes": b, "scores": torch.ones(len(b)), "labels": lab} for _, b, lab in gts]
        return MultiTaskOutput(seg=logits, det=det)


class NoSource(Dataset):
    """The same items without the raw ``source`` (forces the batch-based fallback)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


@pytest.mark.parametrize("ground_truth", ["files", "workers", "none"])
def test_oracle_scores_one_in_original_coordinates(tmp_path, monkeypatch, ground_truth):
    """``files``: the driver reads each sample again; ``workers``: the loader's items carry it (the files are
    not read again: ``SourceIndex.get`` fails); ``none``: no raw source, the batch's letterboxed ground truth."""
    from mtkd.eval.batch import SourceIndex

    spec = descriptor.load_data_yaml(write_dataset(tmp_path))
    loader = build.build_dataloader(
        spec,
        "val",
        imgsz=64,
        batch=2,
        workers=0,
        augment=False,
        shuffle=False,
        ground_truth=ground_truth == "workers",
    )
    raw_source = ground_truth != "none"
    if not raw_source:
        loader = DataLoader(NoSource(loader.dataset), batch_size=2, collate_fn=collate)
    if ground_truth == "workers":
        assert [g.path.name for g in next(iter(loader))["ground_truth"]] == ["im0.png", "im1.png"]
        monkeypatch.setattr(SourceIndex, "get", lambda self, path: pytest.fail(f"{path} read again"))
    monkeypatch.setattr(postprocess, "postprocess_det", lambda det, hw, **kw: det)
    out_dir = tmp_path / "pred"
    m = evaluate_model(Oracle(loader), loader, spec=spec, progress=False, save_predictions=out_dir)
    assert m["det"]["mAP50_95"] == pytest.approx(1.0) and m["det"]["instances"] == 3
    assert m["seg"]["mIoU"] == 1.0 and m["seg"]["pixel_acc"] == 1.0
    assert m["data"]["images"] == 3
    assert m["data"]["seg_resolution"] == ("original" if raw_source else "input")
    # the saved ground truth is in original pixels: image sizes and box coordinates of the files
    import json

    gt = json.loads((out_dir / "ground_truth.json").read_text())
    assert [(im["height"], im["width"]) for im in gt["images"]] == [(h, w) for h, w, _ in IMAGES]
    assert gt["annotations"][1]["bbox"] == pytest.approx([30, 10, 30, 28], abs=1e-3)
    if raw_source:  # every labeled pixel of the original masks was compared
        assert m["seg"]["pixels"] == sum(h * w - 9 for h, w, _ in IMAGES)
    assert sorted(p.name for p in (out_dir / "samples").iterdir())[:2] == ["im0.png", "im0_gt.png"]


def test_real_count_drops_distributed_padding():
    data = list(range(5))
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(data, batch_size=2, sampler=sampler)
        n = real_count(loader, rank, 2)
        seen += list(sampler)[:n]
    assert sorted(seen) == data  # each sample exactly once


def test_fitness():
    assert fitness({"det": {"mAP50_95": 0.4}, "seg": {"mIoU": 0.6}}) == pytest.approx(0.5)
    assert fitness({"det": {"mAP50_95": 0.4}}) == pytest.approx(0.4)
    assert fitness({"seg": {"mIoU": None}}) == 0.0


def test_model_mode_restored_and_trainable_after_eval(tmp_path, monkeypatch):
    spec = descriptor.load_data_yaml(write_dataset(tmp_path))
    loader = build.build_dataloader(spec, "val", imgsz=64, batch=3, workers=0, augment=False, shuffle=False)
    monkeypatch.setattr(postprocess, "postprocess_det", lambda det, hw, **kw: det)
    model = Oracle(loader)
    model.w = nn.Parameter(torch.ones(2))
    model.train()
    evaluate_model(model, loader, spec=spec, device="cpu", progress=False)
    assert model.training and not model.w.is_inference()
    (model.w * 2).sum().backward()  # still usable for training
    assert model.w.grad is not None
