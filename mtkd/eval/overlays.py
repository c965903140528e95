"""Sample overlays: ``draw_sample`` (image + mask overlay + boxes → PNG bytes) and ``SampleOverlayEvaluator``,
which writes ``<stem>_gt.png`` (ground truth) and ``<stem>.png`` (prediction) for the first images of a split
at original resolution (``mtkd eval --save-predictions DIR`` → ``DIR/samples``; the report shows them). A model
with several seg tasks gets one pair per task, ``<stem>@<task>_gt.png`` / ``<stem>@<task>.png``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtkd.eval.batch import original_sample
from mtkd.eval.evaluator import DatasetEvaluator
from mtkd.eval.outputs import EvalOutputs
from mtkd.utils.atomic import write_bytes
from mtkd.utils.dist import rank_and_world

SAMPLE_CONF = 0.25  # score threshold of the boxes drawn on sample overlays (not used for mAP)

# tab10-like colors for class overlays (RGB)
_PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
    dtype=np.uint8,
)  # fmt: skip


def class_color(i: int) -> tuple[int, int, int]:
    """RGB color of class ``i`` (cycles through a 10-color palette)."""
    return tuple(int(v) for v in _PALETTE[i % len(_PALETTE)])  # type: ignore[return-value]


def draw_sample(
    image: np.ndarray,
    *,
    boxes: np.ndarray | None = None,
    labels: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    det_names: Sequence[str] = (),
    ignore_index: int = 255,
    alpha: float = 0.45,
    background: int | None = 0,
    min_size: int = 256,
) -> bytes:
    """Image with a semantic-mask overlay and boxes, as PNG bytes (drawn with PIL).

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        boxes: ``[N, 4]`` xyxy pixels of ``image``; ``labels`` ``[N]`` class ids; ``scores`` ``[N]`` or None (GT).
        mask: ``[H, W]`` class ids; ``ignore_index`` and ``background`` pixels are not colored.
        min_size: images whose longer side is smaller are upscaled (nearest, integer factor) so labels stay
            readable.
    """
    from PIL import Image, ImageDraw

    img = np.ascontiguousarray(image[..., :3]).astype(np.float32)
    if mask is not None:
        m = np.asarray(mask).astype(np.int64)
        colored = (m != ignore_index) & (m != (-1 if background is None else background))
        col = _PALETTE[np.where(colored, m, 0) % len(_PALETTE)].astype(np.float32)
        img[colored] = (1 - alpha) * img[colored] + alpha * col[colored]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    up = max(1, math.ceil(min_size / max(pil.size)))
    if up > 1:
        pil = pil.resize((pil.width * up, pil.height * up), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    if boxes is not None:
        for k, b in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
            c = int(labels[k]) if labels is not None else 0
            rgb = class_color(c + 3)  # offset so box colors differ from the mask colors of the same id
            b = b * up
            draw.rectangle([float(v) for v in b], outline=rgb, width=2)
            text = det_names[c] if c < len(det_names) else str(c)
            if scores is not None:
                text += f" {float(scores[k]):.2f}"
            draw.text((float(b[0]) + 2, float(b[1]) + 1), text, fill=rgb)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


class SampleOverlayEvaluator(DatasetEvaluator):
    """Writes overlays of the first ``n_samples`` images (rank 0 only); ``evaluate()`` returns ``{}``.

    For image ``i`` of a batch (see ``DatasetEvaluator.process`` for the shapes) it draws, at original
    resolution, ``<stem>_gt.png`` from ``original_sample(batch, i)`` and ``<stem>.png`` from ``outputs.seg(i)``
    (when the model segments) and ``outputs.det(i)`` boxes scoring at least ``SAMPLE_CONF`` (when ``det``).
    Each file is written atomically (``mtkd.utils.atomic``).

    Args:
        out_dir: folder receiving the PNGs (created on the first write).
        n_samples: images drawn (the first ones of the split on rank 0).
        det_names: detection class names (box labels). ignore_index: mask value left uncolored.
        det: draw predicted boxes (the model has a detection task).
        seg_tasks: the seg tasks of a several-task model (one overlay pair each); ``None``: the single task.
    """

    def __init__(
        self,
        out_dir: str | Path,
        n_samples: int,
        *,
        det_names: Sequence[str] = (),
        ignore_index: int = 255,
        det: bool = True,
        seg_tasks: Sequence[str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.seg_tasks: list[str | None] = list(seg_tasks) if seg_tasks else [None]
        self.n_samples = int(n_samples)
        self.common: dict[str, Any] = {"det_names": list(det_names), "ignore_index": ignore_index}
        self.det = det
        self._seen = 0

    def reset(self) -> None:
        self._seen = 0

    def process(self, batch: dict[str, Any], outputs: EvalOutputs) -> None:
        if rank_and_world()[0] == 0:
            for i in range(min(batch["n_real"], max(0, self.n_samples - self._seen))):
                self._write(batch, outputs, i)
        self._seen += len(batch["paths"])

    def _write(self, batch: dict[str, Any], outputs: EvalOutputs, i: int) -> None:
        for task in self.seg_tasks:
            self._write_task(batch, outputs, i, task)

    def _write_task(self, batch: dict[str, Any], outputs: EvalOutputs, i: int, task: str | None) -> None:
        image, gt_mask, gt_boxes, gt_labels = original_sample(batch, i, task)
        stem = Path(str(batch["paths"][i])).stem + ("" if task is None else f"@{task}")
        write_bytes(
            self.out_dir / f"{stem}_gt.png",
            what="sample overlay",
            data=draw_sample(
                np.asarray(image),
                boxes=np.asarray(gt_boxes),
                labels=np.asarray(gt_labels),
                mask=np.asarray(gt_mask),
                **self.common,
            ),
        )
        kw: dict[str, Any] = {}
        if self.det:
            pred = outputs.det(i)
            scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
            keep = scores >= SAMPLE_CONF
            kw = dict(
                boxes=np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)[keep],
                labels=np.asarray(pred["labels"]).reshape(-1)[keep],
                scores=scores[keep],
            )
        mask = outputs.seg_of(task, i)
        write_bytes(
            self.out_dir / f"{stem}.png",
            what="sample overlay",
            data=draw_sample(
                np.asarray(image), mask=None if mask is None else mask.cpu().numpy(), **kw, **self.common
            ),
        )
