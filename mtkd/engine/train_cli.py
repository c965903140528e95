"""``mtkd train`` / ``tools/train.py CONFIG [key=value ...]``: plain or distilled training.

Single process: ``python tools/train.py configs/shapes_student.yaml epochs=10``.
DDP: ``torchrun --nproc_per_node 2 tools/train.py configs/shapes_student.yaml device=cpu`` (gloo on CPU,
NCCL on ``device=cuda``; ``batch`` is the global batch, split over the ranks).
"""

from __future__ import annotations

import argparse
import sys

HELP_EPILOG = """\
overrides (key=value, values parsed as YAML; nested keys with dots):
  data=datasets/shapes.yaml model=yolo_mt_n head=anchor|anchor_free imgsz=128 epochs=50 batch=16
  workers=2 device=cpu|cuda|cuda:0 seed=0 project=runs name=train exist_ok=false
  teacher=PATH (absent = plain training)  student=PATH (initial weights, e.g. a pruned checkpoint)
  resume=true|PATH  temperature=4 alpha_seg=0.5 alpha_det=0.5 ratio_seg=1 ratio_det=1
  amp=off|bf16|fp16 ema=true eval_every=1 patience=0  lr=0.001 (= optim.lr) optimizer=adamw|sgd
  distill.feat_kd.names=[p3,p4,p5] distill.feat_kd.kind=fitnet distill.feat_kd.weight=1.0
  alpha_seg='{kind: linear, start: 0.9, end: 0.3}'  (schedules for temperature / alphas)
run dir: {project}/{name}/ with config.yaml, results.csv, weights/last.pt, weights/best.pt; one run at a time
(a second run into the same folder is refused; a folder with files but no last.pt needs exist_ok=true)
Ctrl-C saves a resumable weights/last.pt (exit code 130); continue with resume=true."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mtkd train",
        description="Train a multi-task student, plain or distilled from a teacher.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML (e.g. configs/shapes_distill.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    from mtkd.config import load_config
    from mtkd.engine.trainer import Trainer, TrainingInterrupted
    from mtkd.utils import dist

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    finished = False
    try:
        run_dir = trainer.fit()
        finished = True
    except TrainingInterrupted as e:
        if dist.is_main():
            print(f"mtkd train: {e}", file=sys.stderr)
        return 130
    finally:
        main_rank = dist.is_main()
        dist.cleanup(synchronize=finished)
    if main_rank:
        made = [f for f in ("weights/best.pt", "weights/last.pt", "results.csv") if (run_dir / f).is_file()]
        print(f"done: {run_dir} ({', '.join(made) or 'no files written'})")
    return 0
