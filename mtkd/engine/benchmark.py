"""``mtkd benchmark`` / ``tools/benchmark.py``: what distillation costs, measured in one process.

On the same batches, interleaved round-robin so that background load hits every measurement alike, it times

- ``student_step``: a full plain training step of the student (``TrainTask``: forward, task loss, backward,
  optimizer, EMA);
- ``teacher_forward``: the frozen teacher's forward under ``no_grad`` (with the feature taps KD uses);
- ``kd_step``: a full distillation training step (``DistillTask``: student step + teacher forward + KD losses +
  connectors);

and reports medians after warm-up, plus

- ``kd_overhead_ratio = kd_step / (student_step + teacher_forward)``: 1.0 means distillation costs nothing
  beyond the teacher's forward (the limit without caching teacher outputs); the target on CPU is <= 1.10;
- ``kd_vs_student = kd_step / student_step``;
- dataloader throughput (train pipeline with augmentation, images/s) and evaluation throughput
  (``evaluate_model`` on the val split, images/s).

Without ``--teacher`` a randomly initialised teacher of ``--teacher-model`` is used: timings do not depend on
the weights. Without a dataset at the config's ``data`` path a small shapes set is generated in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtkd benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/shapes_distill.yaml", help="distillation config (YAML)")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: random --teacher-model)")
    p.add_argument("--teacher-model", default="yolo_mt_s")
    p.add_argument("--out", default="bench.json", help="where to write the results JSON")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. batch=16)")
    return p


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _prepare(args: argparse.Namespace, tmp: Path) -> Any:
    """Resolve the config: dataset present (or generated), teacher checkpoint present (or random)."""
    from mtkd.config import load_config
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.errors import DatasetError

    overrides = [
        f"project={tmp / 'runs'}",
        "name=bench",
        "exist_ok=true",
        "tensorboard=false",
        "ema=true",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    try:
        load_data_yaml(cfg.data)  # checks that the split folders exist
    except DatasetError:
        from mtkd.data.shapes import make_shapes

        print(f"benchmark: {cfg.data} not usable here; generating a small shapes set in {tmp}")

        cfg = cfg.replace(data=str(make_shapes(tmp / "shapes", n_train=64, n_val=16, size=cfg.imgsz, seed=0)))
    teacher = args.teacher
    if teacher is None:
        from mtkd.checkpoint import save_model
        from mtkd.models import build_model

        spec = load_data_yaml(cfg.data)
        t = build_model(args.teacher_model, det_names=spec.det_names, seg_names=spec.seg_names, head=cfg.head)
        teacher = str(save_model(tmp / "teacher.pt", t))
    return cfg.replace(teacher=teacher)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from mtkd.engine.task import TrainTask
    from mtkd.engine.trainer import Trainer
    from mtkd.eval.evaluate import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtkd-bench-") as d:
        tmp = Path(d)
        cfg = _prepare(args, tmp)
        trainer = Trainer(cfg)
        trainer.setup()
        batches = []
        t_load = time.perf_counter()
        for b in trainer.train_loader:
            batches.append(b)
            if len(batches) == args.batches:
                break
        load_s = time.perf_counter() - t_load
        n_loaded = sum(len(b["images"]) for b in batches)
        kd = trainer.task  # a DistillTask: student + connectors, the teacher outside
        plain = TrainTask(kd.student, kd.task_loss, ratio_seg=cfg.ratio_seg, ratio_det=cfg.ratio_det)
        feats = kd.feature_names

        def student_step(b):  # same step, same optimizer, plain task (the student's task losses only)
            trainer.run_step(b, 0, 0, task=plain)

        def teacher_forward(b):
            with torch.no_grad():
                kd.teacher(b["images"].to(trainer.device).float(), features=feats)

        def kd_step(b):
            trainer.run_step(b, 0, 0)

        fns = {"student_step": student_step, "teacher_forward": teacher_forward, "kd_step": kd_step}
        kd.train()
        for i in range(args.warmup):
            for fn in fns.values():
                fn(batches[i % len(batches)])
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(args.steps):
            b = batches[i % len(batches)]
            for k, fn in fns.items():  # interleaved: background load hits all three alike
                times[k].append(_time(lambda fn=fn, b=b: fn(b)))
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}

        t0 = time.perf_counter()
        ev = evaluate_model(
            trainer.ema.ema if trainer.ema else trainer.student,
            trainer.val_loader,
            spec=trainer.spec,
            device=trainer.device,
            progress=False,
        )
        eval_s = time.perf_counter() - t0
        n_eval = int(ev.get("data", {}).get("images") or len(trainer.val_loader.dataset))

        return {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": torch.get_num_threads(),
                "torch": torch.__version__,
                "device": str(trainer.device),
            },
            "config": {
                "student": cfg.student or cfg.model,
                "teacher_model": args.teacher_model if args.teacher is None else args.teacher,
                "imgsz": cfg.imgsz,
                "batch": cfg.batch,
                "feat_kd": list(feats),
                "steps": args.steps,
                "warmup": args.warmup,
            },
            "ms": {k: round(v, 3) for k, v in med.items()},
            "kd_overhead_ratio": round(med["kd_step"] / (med["student_step"] + med["teacher_forward"]), 4),
            "kd_vs_student": round(med["kd_step"] / med["student_step"], 4),
            "dataloader_images_per_s": round(n_loaded / load_s, 2),
            "eval_images_per_s": round(n_eval / eval_s, 2),
        }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    res = run_benchmark(args)
    from mtkd.utils.atomic import write_text

    write_text(
        args.out, json.dumps(res, indent=2) + "\n", what="benchmark JSON"
    )  # atomic: a failure keeps the old
    ms = res["ms"]
    print(
        f"student_step {ms['student_step']:.1f} ms | teacher_forward {ms['teacher_forward']:.1f} ms | "
        f"kd_step {ms['kd_step']:.1f} ms"
    )
    print(
        f"kd_overhead_ratio = {res['kd_overhead_ratio']:.3f} (target <= 1.10)   "
        f"kd_vs_student = {res['kd_vs_student']:.3f}"
    )
    print(
        f"dataloader {res['dataloader_images_per_s']:.1f} img/s | eval {res['eval_images_per_s']:.1f} img/s"
    )
    print(f"wrote {args.out}")
    return 0
