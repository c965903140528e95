"""``tools/benchmark.py --vs-ultralytics``: mtkd's trainer side by side with Ultralytics' own detection trainer.

Both train on the same ``yolo_mask`` dataset (its ``images/`` + ``labels/`` folders are an Ultralytics detection
dataset as they are) with the same model YAML (default ``yolov8n.yaml``), image size, batch, workers, epochs,
seed and device:

- **Ultralytics**: ``ultralytics.models.yolo.detect.DetectionTrainer`` — detection only, its default
  augmentation (mosaic included; ``close_mosaic=0`` so every epoch has the same pipeline), no pretrained
  weights, ``val=False`` (Ultralytics still validates after the last epoch, outside the timed window), no plots,
  and its gradient accumulation to a nominal batch of 64 (one optimizer step per ``64 / batch`` batches);
- **mtkd**: plain training (``Trainer``, no teacher) of the ``ultralytics`` adapter on the same YAML with mtkd's
  segmentation head, the config's augmentation, evaluation only after the last epoch (outside the window).

Timed window of an epoch: from the epoch's start (the trainers' own epoch-start callback/hook) to the end of its
last optimizer step, so evaluation, checkpoints and logging between epochs are excluded while the data loading
inside an epoch is included. Throughput = images stepped / window, over the steady-state epochs (the first
epoch, with the workers' start-up and the allocator's warm-up, is excluded; at least 2 epochs are needed).
``ratio = mtkd / ultralytics``; mtkd's model also has a segmentation head, whose cost is reported separately
(``seg_head_params``) — the throughputs are not per-parameter normalized. The two trainers run one after the
other (Ultralytics first), so background load that changes between them shows in the ratio: rerun on a quiet
machine. Ultralytics writes its ``labels/<split>.cache`` next to the dataset's labels, as its own training does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from mtkd.engine.hooks import HookBase


class _EpochWindows(HookBase):
    """Per epoch: seconds from ``before_epoch`` to the end of the last step, and the images stepped."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, int]] = []
        self._t0 = self._t_last = 0.0
        self._images = 0

    def before_epoch(self) -> None:
        self._t0 = self._t_last = time.perf_counter()
        self._images = 0

    def after_step(self) -> None:
        from mtkd.engine.step_timing import sync

        sync(self.trainer.device)
        self._t_last = time.perf_counter()
        self._images = self.trainer.images_done

    def after_epoch(self) -> None:
        self.windows.append((self._t_last - self._t0, self._images))


def steady_rate(windows: list[tuple[float, int]]) -> float:
    """Images per second over every epoch but the first (``[(seconds, images), ...]``, one entry per epoch)."""
    steady = windows[1:]
    if not steady:
        raise ValueError("the side-by-side benchmark needs at least 2 epochs (the first one is excluded)")
    return sum(n for _, n in steady) / sum(s for s, _ in steady)


def ultralytics_data_yaml(spec: Any, out: Path) -> Path:
    """An Ultralytics detection data YAML for the ``train``/``val`` folders of yolo_mask ``spec``."""
    if spec.format != "yolo_mask":
        from mtkd.errors import ConfigError

        raise ConfigError(
            f"data: {spec.yaml_path}: --vs-ultralytics needs a yolo_mask dataset, got {spec.format}"
        )
    val = "val" if "val" in spec.splits else "train"
    doc = {
        "path": str(spec.root),
        "train": f"images/{spec.splits['train']}",
        "val": f"images/{spec.splits[val]}",
        "names": dict(enumerate(spec.det_names)),
    }
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def run_ultralytics(
    data_yaml: Path,
    model_yaml: str,
    *,
    imgsz: int,
    batch: int,
    workers: int,
    epochs: int,
    seed: int,
    device: str,
    amp: bool,
    project: Path,
) -> list[tuple[float, int]]:
    """Train Ultralytics' ``DetectionTrainer``; returns the per-epoch ``(seconds, images)`` windows."""
    from mtkd.utils.env import quiet_ultralytics

    with quiet_ultralytics():
        from ultralytics.models.yolo.detect import DetectionTrainer

    windows: list[tuple[float, int]] = []
    state = {"t0": 0.0, "t_last": 0.0}

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def on_epoch_start(trainer: Any) -> None:
        state.update(t0=time.perf_counter(), t_last=time.perf_counter())

    def on_batch_end(trainer: Any) -> None:
        sync()
        state["t_last"] = time.perf_counter()

    def on_epoch_end(trainer: Any) -> None:
        # the batch is not kept on the trainer: every image of the train set is stepped once (no drop_last)
        windows.append((state["t_last"] - state["t0"], len(trainer.train_loader.dataset)))

    overrides = {
        "model": model_yaml,
        "data": str(data_yaml),
        "imgsz": imgsz,
        "batch": batch,
        "workers": workers,
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "amp": amp,
        "pretrained": False,
        "val": False,
        "plots": False,
        "close_mosaic": 0,
        "project": str(project),
        "name": "ultralytics",
        "exist_ok": True,
        "verbose": False,
    }
    with quiet_ultralytics():
        trainer = DetectionTrainer(overrides=overrides)
        trainer.add_callback("on_train_epoch_start", on_epoch_start)
        trainer.add_callback("on_train_batch_end", on_batch_end)
        trainer.add_callback("on_train_epoch_end", on_epoch_end)
        trainer.train()
    return windows


def run_mtkd(cfg: Any, model_yaml: str) -> tuple[list[tuple[float, int]], dict[str, int]]:
    """mtkd's plain training of the ``ultralytics`` adapter on ``model_yaml`` (+ seg head); returns the per-epoch
    windows and the model's parameter counts (``total``, ``seg_head``)."""
    from mtkd.engine.trainer import Trainer

    timer = _EpochWindows()
    model = {"adapter": "ultralytics", "model": model_yaml}
    trainer = Trainer(cfg.replace(model=model, head="anchor_free"), hooks=[timer])
    trainer.fit()
    student = trainer.student
    total = sum(p.numel() for p in student.parameters())
    seg = getattr(student, "seg", None)  # the adapter's SegHead on P3/P4
    seg_params = sum(p.numel() for p in seg.parameters()) if seg is not None else 0
    return timer.windows, {"total": total, "seg_head": seg_params}


def side_by_side(cfg: Any, *, model_yaml: str, epochs: int, tmp: Path) -> dict[str, Any]:
    """Both trainers on ``cfg``'s dataset and settings; the result dict of ``--vs-ultralytics``."""
    from mtkd.data.descriptor import load_data_yaml

    os.environ.setdefault("YOLO_OFFLINE", "1")  # a command's choice (never at import): no network probe
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "ultralytics-settings"))
    spec = load_data_yaml(cfg.data)
    data_yaml = ultralytics_data_yaml(spec, tmp / "ultralytics-data.yaml")
    cfg = cfg.replace(teacher=None, epochs=epochs, eval_every=epochs, ema=True, project=str(tmp / "runs"))
    ul = run_ultralytics(
        data_yaml,
        model_yaml,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        workers=cfg.workers,
        epochs=epochs,
        seed=cfg.seed,
        device=cfg.device,
        amp=cfg.amp != "off",
        project=tmp / "runs",
    )
    mt, params = run_mtkd(cfg, model_yaml)
    ul_rate, mt_rate = steady_rate(ul), steady_rate(mt)
    return {
        "settings": {
            "data": str(spec.yaml_path),
            "model": model_yaml,
            "imgsz": cfg.imgsz,
            "batch": cfg.batch,
            "workers": cfg.workers,
            "epochs": epochs,
            "device": cfg.device,
            "amp": cfg.amp,
        },
        "ultralytics_images_per_s": round(ul_rate, 2),
        "mtkd_images_per_s": round(mt_rate, 2),
        "ratio": round(mt_rate / ul_rate, 4),
        "epochs_s": {
            "ultralytics": [round(s, 3) for s, _ in ul],
            "mtkd": [round(s, 3) for s, _ in mt],
        },
        "mtkd_params": params["total"],
        "seg_head_params": params["seg_head"],
    }
