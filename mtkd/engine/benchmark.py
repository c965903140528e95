"""``mtkd benchmark`` / ``tools/benchmark.py``: what distillation costs, measured in one process.

On the same batches, interleaved round-robin so that background load hits every measurement alike (the order
rotated every round, so that no timing always follows the same one), it times

- ``student_step``: a full plain training step of the student (``TrainTask``: forward, task loss, backward,
  optimizer, EMA);
- ``teacher_forward``: the frozen teacher's forward under ``no_grad`` as the distillation step runs it
  (``DistillTask.teacher_outputs``: with the feature taps KD uses, seg logits at the head's resolution);
- ``kd_step``: a full distillation training step (``DistillTask``: student step + teacher forward + KD losses +
  connectors);

and reports medians after warm-up, plus

- ``kd_overhead_ratio = kd_step / (student_step + teacher_forward)``: 1.0 means distillation costs nothing
  beyond the teacher's forward (the limit without caching teacher outputs); the goal is <= 1.05 (issue 14).
  It is the median of the per-round ratios (the three timings of one round are taken back to back, so slow
  drifts of background load cancel); ``kd_overhead_ratio_of_medians`` is the ratio of the medians in ``ms``;
- ``kd_vs_student = kd_step / student_step`` (per-round, likewise);
- ``train_images_per_s`` / ``kd_images_per_s``: images per second of the student / distillation step;
- ``dataloader_images_per_s`` (train pipeline with augmentation, ``dataloader_workers`` workers, after the
  first batch, whose wait is ``dataloader_first_batch_s``) and ``eval_images_per_s`` (``evaluate_model`` on the
  val split, the median of ``--eval-passes`` passes, each in ``eval_passes_s``, after a first one: the val
  loader and its persistent workers are reused between evaluations, as in training; the first pass, with the
  workers' start, is ``eval_first_pass_s``); ``eval_vs_train``: the median over the timed passes of the pass's
  rate over the training rate of the student steps timed just before it (``eval_train_step_s``, the median of
  ``TRAIN_STEPS_PER_PASS`` steps), the eval/train ratio with both rates measured back to back;
- ``phases_ms``: the median per-phase breakdown of both steps, from separate instrumented steps (each phase
  bracketed by device syncs): ``data_to_device``, ``forward`` (student), ``teacher_forward``, ``task_loss``,
  ``kd_loss``, ``backward`` (with ``zero_grad``), ``optimizer`` (clipping, step, LR schedule), ``ema``, ``other``
  (the rest: the host copy of the terms and the finite check, autocast) and ``total``.

On CUDA every timing is bracketed by ``torch.cuda.synchronize`` (asynchronous kernels are timed to completion).

Without ``--teacher`` a randomly initialised teacher of ``--teacher-model`` is used: timings do not depend on
the weights. Without a dataset at the config's ``data`` path a small shapes set is generated in a temp folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtkd.engine.step_timing import paired_ratio, phase_breakdown, sync, time_call


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtkd benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/shapes_distill.yaml", help="distillation config (YAML)")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: random --teacher-model)")
    p.add_argument("--teacher-model", default="yolo_mt_s")
    p.add_argument("--out", default="bench.json", help="where to write the results JSON")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument(
        "--loader-batches", type=int, default=8, help="batches read to time the dataloader (first one apart)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--eval-passes", type=int, default=3, help="timed evaluation passes after the first (median reported)"
    )
    p.add_argument(
        "--vs-ultralytics",
        action="store_true",
        help="instead: train Ultralytics' detection trainer and mtkd (ultralytics adapter + seg head) on the same "
        "data and settings and print the steady-state throughput ratio (mtkd.engine.benchmark_ultralytics)",
    )
    p.add_argument(
        "--model-yaml", default="yolov8n.yaml", help="--vs-ultralytics: the Ultralytics model YAML"
    )
    p.add_argument(
        "--epochs", type=int, default=4, help="--vs-ultralytics: epochs per trainer (first excluded)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (e.g. batch=16)")
    return p


TRAIN_STEPS_PER_PASS = 3  # student steps timed right before each timed evaluation pass (eval_vs_train)


def _age(root: Path) -> None:
    """Date the generated files back past the sample index's racy window (``mtkd.data.index.RACY_S``): files
    written seconds ago are not trusted yet and read the validating way, which a dataset on disk for longer
    never is; the benchmark times the indexed path users get."""
    import os

    from mtkd.data.index import RACY_S

    past = time.time() - 2 * RACY_S
    for f in root.rglob("*"):
        if f.is_file():
            os.utime(f, (past, past))


def _prepare(args: argparse.Namespace, tmp: Path, *, teacher: bool = True) -> Any:
    """Resolve the config: dataset present (or generated: 64 training images, 256 with ``--vs-ultralytics``, and
    120 val images, as the default config's shapes set has),
    teacher checkpoint present (or random; none when ``teacher`` is false)."""
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

        n_train = 256 if args.vs_ultralytics else 64  # the steps cycle through --batches batches only
        # val: the 120 images of the default config's datasets/shapes (make_shapes' and the demo's default), so
        # the eval rate is that of the dataset the config names, not of a smaller set's fixed per-pass costs
        data = make_shapes(tmp / "shapes", n_train=n_train, n_val=120, size=cfg.imgsz, seed=0)
        _age(tmp / "shapes")
        cfg = cfg.replace(data=str(data))
    if not teacher:
        return cfg.replace(teacher=None, student=None)
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
    from mtkd.utils.env import frozen_gc_heap

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtkd-bench-") as d, contextlib.ExitStack() as after_setup:
        tmp = Path(d)
        cfg = _prepare(args, tmp)
        trainer = Trainer(cfg)
        trainer.setup()
        after_setup.enter_context(frozen_gc_heap())  # as Trainer.fit does around its loop
        dev = trainer.device
        batches, n_later = [], 0
        t_load = time.perf_counter()
        for b in trainer.train_loader:  # the first batch waits for the workers' start: timed apart
            if not batches:
                first_s = time.perf_counter() - t_load
                t_load = time.perf_counter()
            else:
                n_later += len(b["images"])
            batches.append(b)
            if len(batches) == max(args.batches, args.loader_batches):
                break
        load_s = time.perf_counter() - t_load
        if len(batches) == 1:  # a one-batch epoch: its rate includes the start
            n_later, load_s = len(batches[0]["images"]), first_s
        batches = batches[: args.batches]
        per_batch = sum(len(b["images"]) for b in batches) / len(batches)
        kd = trainer.task  # a DistillTask: student + connectors, the teacher outside
        plain = TrainTask(kd.student, kd.task_loss, ratio_seg=cfg.ratio_seg, ratio_det=cfg.ratio_det)
        feats = kd.feature_names

        def student_step(b):  # same step, same optimizer, plain task (the student's task losses only)
            trainer.run_step(b, 0, 0, task=plain)

        def teacher_forward(b):  # as the distillation step runs it (DistillTask.teacher_outputs)
            kd.teacher_outputs(trainer.to_device({"images": b["images"]})["images"].float())

        def kd_step(b):
            trainer.run_step(b, 0, 0)

        fns = {"student_step": student_step, "teacher_forward": teacher_forward, "kd_step": kd_step}
        kd.train()
        for i in range(args.warmup):
            for fn in fns.values():
                fn(batches[i % len(batches)])
        times: dict[str, list[float]] = {k: [] for k in fns}
        order = list(fns.items())
        for i in range(args.steps):
            b = batches[i % len(batches)]
            # interleaved, so background load hits all three alike, and in an order rotated every round, so no
            # timing always follows the same one (what ran just before sets the caches' and allocator's state)
            for k, fn in order[i % len(order) :] + order[: i % len(order)]:
                times[k].append(time_call(lambda fn=fn, b=b: fn(b), dev))
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        phases = phase_breakdown(
            trainer, {"student_step": (plain, plain), "kd_step": (None, kd)}, batches, args.steps
        )

        model = trainer.ema.ema if trainer.ema else trainer.student
        eval_s, train_round_s = [], []
        # the first pass starts the val loader's (persistent) workers, as training's first evaluation does; the
        # rate is the median of the passes after it (what every later evaluation of a run costs). Before each
        # timed pass, ``TRAIN_STEPS_PER_PASS`` student steps are timed: eval_vs_train compares the two rates
        # measured back to back, as kd_overhead_ratio does its three timings
        for k in range(1 + args.eval_passes):
            if k:
                steps = [batches[j % len(batches)] for j in range(TRAIN_STEPS_PER_PASS)]
                train_round_s.append(
                    statistics.median(time_call(lambda b=b: student_step(b), dev) for b in steps)
                )
            sync(dev)
            t0 = time.perf_counter()
            ev = evaluate_model(model, trainer.val_loader, spec=trainer.spec, device=dev, progress=False)
            sync(dev)
            eval_s.append(time.perf_counter() - t0)
        n_eval = int(ev.get("data", {}).get("images") or len(trainer.val_loader.dataset))

        return {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": torch.get_num_threads(),
                "torch": torch.__version__,
                "device": str(dev),
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            },
            "config": {
                "student": cfg.student or cfg.model,
                "teacher_model": args.teacher_model if args.teacher is None else args.teacher,
                "data": str(cfg.data),
                "eval_images": n_eval,
                "imgsz": cfg.imgsz,
                "batch": cfg.batch,
                "amp": cfg.amp,
                "channels_last": cfg.channels_last,
                "compile": cfg.compile,
                "feat_kd": list(feats),
                "steps": args.steps,
                "warmup": args.warmup,
            },
            "ms": {k: round(v, 3) for k, v in med.items()},
            "rounds_ms": {k: [round(t * 1000, 3) for t in v] for k, v in times.items()},
            "kd_overhead_ratio": round(
                paired_ratio(times["kd_step"], times["student_step"], times["teacher_forward"]), 4
            ),
            "kd_overhead_ratio_of_medians": round(
                med["kd_step"] / (med["student_step"] + med["teacher_forward"]), 4
            ),
            "kd_vs_student": round(paired_ratio(times["kd_step"], times["student_step"]), 4),
            "train_images_per_s": round(per_batch / med["student_step"] * 1000, 2),
            "kd_images_per_s": round(per_batch / med["kd_step"] * 1000, 2),
            "dataloader_images_per_s": round(n_later / load_s, 2),
            "dataloader_workers": cfg.workers,
            "dataloader_first_batch_s": round(first_s, 4),
            "eval_images_per_s": round(n_eval / statistics.median(eval_s[1:]), 2),
            "eval_passes_s": [round(t, 4) for t in eval_s[1:]],
            "eval_vs_train": round(
                statistics.median((n_eval / e) / (per_batch / t) for e, t in zip(eval_s[1:], train_round_s)),
                3,
            ),
            "eval_train_step_s": [round(t, 4) for t in train_round_s],
            "eval_first_pass_s": round(eval_s[0], 4),
            "phases_ms": phases,
        }


def run_vs_ultralytics(args: argparse.Namespace) -> dict[str, Any]:
    """``--vs-ultralytics``: ``mtkd.engine.benchmark_ultralytics.side_by_side`` on the prepared config."""
    from mtkd.engine.benchmark_ultralytics import side_by_side

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtkd-bench-") as d:
        tmp = Path(d)
        cfg = _prepare(args, tmp, teacher=False)
        return side_by_side(cfg, model_yaml=args.model_yaml, epochs=args.epochs, tmp=tmp)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``key=value`` overrides may come before, between or after the options."""
    return _parser().parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mtkd.utils.atomic import write_text

    if args.vs_ultralytics:
        if args.epochs < 2:
            from mtkd.errors import ConfigError

            raise ConfigError(
                f"--epochs: {args.epochs}; the side-by-side needs >= 2 (the first one is excluded)"
            )
        res = run_vs_ultralytics(args)
        write_text(args.out, json.dumps(res, indent=2) + "\n", what="benchmark JSON")
        st = res["settings"]
        print(
            f"{st['model']} at {st['imgsz']} px, batch {st['batch']}, {st['workers']} workers, {st['device']}, "
            f"{st['epochs']} epochs (first excluded)"
        )
        print(
            f"Ultralytics detection trainer {res['ultralytics_images_per_s']:.1f} img/s | mtkd (+ seg head, "
            f"{res['seg_head_params'] / 1e6:.2f}M of {res['mtkd_params'] / 1e6:.2f}M params) "
            f"{res['mtkd_images_per_s']:.1f} img/s | ratio {res['ratio']:.3f}"
        )
        print(f"wrote {args.out}")
        return 0
    res = run_benchmark(args)
    write_text(
        args.out, json.dumps(res, indent=2) + "\n", what="benchmark JSON"
    )  # atomic: a failure keeps the old
    ms = res["ms"]
    print(
        f"student_step {ms['student_step']:.1f} ms | teacher_forward {ms['teacher_forward']:.1f} ms | "
        f"kd_step {ms['kd_step']:.1f} ms"
    )
    print(
        f"kd_overhead_ratio = {res['kd_overhead_ratio']:.3f} (goal <= 1.05)   "
        f"kd_vs_student = {res['kd_vs_student']:.3f}"
    )
    print(
        f"train {res['train_images_per_s']:.1f} img/s | kd {res['kd_images_per_s']:.1f} img/s | "
        f"dataloader {res['dataloader_images_per_s']:.1f} img/s ({res['dataloader_workers']} workers) | "
        f"eval {res['eval_images_per_s']:.1f} img/s (eval_vs_train {res['eval_vs_train']:.2f}x, goal >= 2)"
    )
    for step, ph in res["phases_ms"].items():
        print(f"{step} phases (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
    print(f"wrote {args.out}")
    return 0
