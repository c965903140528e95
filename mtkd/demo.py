"""``make demo`` / ``mtkd demo``: the whole mtkd story on the built-in shapes dataset, end to end.

1. generate the shapes dataset (when missing) and validate it;
2. train a teacher (``configs/shapes_teacher.yaml``);
3. prune a copy of it with Torch-Pruning to about half its parameters (the "pruned student");
4. fine-tune the pruned student twice with the same epochs and seed: without a teacher
   (``configs/shapes_student.yaml``) and with distillation from the teacher (``configs/shapes_distill.yaml``);
5. evaluate teacher / pruned / fine-tuned / distilled on the val split → ``{out}/metrics/*.json``;
6. write ``{out}/report.html`` + ``report.md`` (the four checkpoints' latencies re-timed together, interleaved:
   ``{out}/latency.json``) and print a summary table.

Every step is the same public command a user runs (train, prune, eval, report), called in-process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mtkd.errors import MtkdError

MODELS = ("teacher", "pruned", "finetuned", "distilled")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtkd demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/demo", help="output folder (runs, metrics, report)")
    p.add_argument(
        "--data-dir", default="datasets/shapes", help="where the shapes dataset lives / is generated"
    )
    p.add_argument("--n-train", type=int, default=500, help="shapes train images (when generating)")
    p.add_argument("--n-val", type=int, default=120, help="shapes val images (when generating)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: configs/shapes_teacher.yaml")
    p.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help="epochs of each student run (default: configs/shapes_student.yaml)",
    )
    p.add_argument(
        "--prune-ratio",
        type=float,
        default=0.3,
        help="Torch-Pruning channel ratio (0.3 of channels ≈ half the parameters)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default="configs", help="folder with the shapes_*.yaml configs")
    return p


def _step(i: int, n: int, text: str, t0: float) -> None:
    print(f"\n=== [{i}/{n}] {text}  (t+{time.perf_counter() - t0:.0f}s) ===", flush=True)


def _run(command: str, argv: list[str]) -> None:
    """Run a public mtkd command in-process; a non-zero exit stops the demo with the command line."""
    import importlib

    from mtkd.cli import COMMANDS

    module, func = COMMANDS[command][0].split(":")
    rc = int(getattr(importlib.import_module(module), func)(argv) or 0)
    if rc != 0:
        raise MtkdError(f"step failed (exit {rc}): mtkd {command} {' '.join(argv)}")


def _summary(metrics_dir: Path, latency_json: Path | None = None) -> list[dict]:
    """One row per model; latency from the report's interleaved timing (``latency.json``) when there is one."""
    timed: dict[str, dict] = {}
    if latency_json is not None and latency_json.is_file():
        lat = json.loads(latency_json.read_text())
        timed = {Path(src).stem: lat["models"][n] for n, src in lat.get("inputs", {}).items()}
    rows = []
    for name in MODELS:
        m = json.loads((metrics_dir / f"{name}.json").read_text())
        rows.append(
            {
                "model": name,
                "mAP50": m["det"]["mAP50"],
                "mAP50_95": m["det"]["mAP50_95"],
                "mIoU": m["seg"]["mIoU"],
                "params": m["model"]["params"],
                "latency_ms": (timed.get(name) or m.get("speed") or {}).get("latency_ms_p50"),
            }
        )
    return rows


def _print_summary(rows: list[dict]) -> None:
    print(f"\n{'model':<11}{'mAP50':>8}{'mAP50-95':>10}{'mIoU':>8}{'params':>10}{'latency':>10}")
    for r in rows:
        lat = f"{r['latency_ms']:.1f}ms" if r["latency_ms"] is not None else "-"
        print(
            f"{r['model']:<11}{r['mAP50']:>8.3f}{r['mAP50_95']:>10.3f}{r['mIoU']:>8.3f}"
            f"{r['params'] / 1e6:>9.2f}M{lat:>10}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    cfg_dir = Path(args.configs)
    data_dir = Path(args.data_dir)
    data_yaml = data_dir / "data.yaml"
    n = 6

    _step(1, n, f"dataset: {data_yaml}", t0)
    if not data_yaml.is_file():
        from mtkd.data.shapes import make_shapes

        make_shapes(data_dir, n_train=args.n_train, n_val=args.n_val, size=args.imgsz, seed=args.seed)
    _run("check_dataset", [str(data_yaml)])

    common = [
        f"data={data_yaml}",
        f"imgsz={args.imgsz}",
        f"workers={args.workers}",
        f"seed={args.seed}",
        f"project={out}",
        "exist_ok=true",
    ]
    teacher_w = out / "teacher" / "weights" / "best.pt"
    pruned_w = out / "pruned.pt"
    student_epochs = [f"epochs={args.student_epochs}"] if args.student_epochs else []

    _step(2, n, "train the teacher", t0)
    _run(
        "train",
        [
            str(cfg_dir / "shapes_teacher.yaml"),
            *common,
            "name=teacher",
            *([f"epochs={args.teacher_epochs}"] if args.teacher_epochs else []),
        ],
    )

    _step(3, n, f"prune a copy of the teacher (channel ratio {args.prune_ratio})", t0)
    _run(
        "prune",
        [
            "--weights",
            str(teacher_w),
            "--ratio",
            str(args.prune_ratio),
            "--out",
            str(pruned_w),
            "--imgsz",
            str(args.imgsz),
        ],
    )

    _step(4, n, "fine-tune the pruned student WITHOUT distillation", t0)
    _run(
        "train",
        [
            str(cfg_dir / "shapes_student.yaml"),
            *common,
            "name=finetuned",
            f"student={pruned_w}",
            *student_epochs,
        ],
    )

    _step(5, n, "fine-tune the pruned student WITH distillation from the teacher", t0)
    _run(
        "train",
        [
            str(cfg_dir / "shapes_distill.yaml"),
            *common,
            "name=distilled",
            f"student={pruned_w}",
            f"teacher={teacher_w}",
            *student_epochs,
        ],
    )

    _step(6, n, "evaluate all four models and write the report", t0)
    metrics_dir = out / "metrics"
    weights = {
        "teacher": teacher_w,
        "pruned": pruned_w,
        "finetuned": out / "finetuned" / "weights" / "best.pt",
        "distilled": out / "distilled" / "weights" / "best.pt",
    }
    for name, w in weights.items():
        _run(
            "eval",
            [
                "--weights",
                str(w),
                "--data",
                str(data_yaml),
                "--split",
                "val",
                "--imgsz",
                str(args.imgsz),
                "--out",
                str(metrics_dir / f"{name}.json"),
                "--save-predictions",
                str(out / "predictions" / name),
            ],
        )
    _run(
        "report",
        [*(str(metrics_dir / f"{m}.json") for m in MODELS), "--out", str(out), "--measure-latency"],
    )

    rows = _summary(metrics_dir, out / "latency.json")
    _print_summary(rows)
    ft, kd = rows[2], rows[3]
    print(
        f"\ndistilled - fine-tuned (one seed): mIoU {kd['mIoU'] - ft['mIoU']:+.3f} "
        f"({kd['mIoU']:.3f} vs {ft['mIoU']:.3f}), mAP50 {kd['mAP50'] - ft['mAP50']:+.3f} "
        f"({kd['mAP50']:.3f} vs {ft['mAP50']:.3f}). One run cannot tell a win from seed noise: "
        f"`mtkd study` repeats both arms over seeds and gives the 95% interval of the difference."
    )
    print(f"report: {out / 'report.html'}   total time {time.perf_counter() - t0:.0f}s")
    return 0
