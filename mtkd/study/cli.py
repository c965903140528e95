"""``mtkd study`` / ``tools/study.py``: does distillation beat plain fine-tuning, beyond seed noise?

    tools/study.py --data DATA (--teacher CKPT | --teacher-epochs N [--teacher-model M])
                   (--student CKPT | --ratio R | --target-macs M) [--seeds K | --seed-list 0,1,2]
                   [--epochs E] --out DIR [--ft-config C] [--kd-config C] [--eval-weights last|best]
                   [key=value ...]

For every seed the student is fine-tuned without a teacher (``--ft-config``) and distilled from the teacher
(``--kd-config``) with the same epochs, data, image size, batch and LR (the two configs may differ only in the
distillation keys; ``key=value`` overrides apply to both arms, and except the optimizer keys to a teacher the
study trains). Each run is evaluated on the dataset's val split. Writes ``DIR/study.json``, ``DIR/report.html``
(opens offline) and ``DIR/report.md``: mean ± std per arm, the paired KD − FT difference per metric with its 95%
Student-t interval, the fraction of the teacher–FT gap recovered, wall times, and a verdict per metric.

Resumable: run the same command again; finished runs (their ``DIR/metrics/*.json``) are kept, an interrupted one
continues from its ``last.pt``, and ``--seeds``/``--seed-list`` may grow. A folder whose recorded settings differ
from the command's is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtkd.errors import ConfigError
from mtkd.study.plan import (
    DEFAULT_FT_CONFIG,
    DEFAULT_KD_CONFIG,
    DEFAULT_TEACHER_CONFIG,
    DEFAULT_TEACHER_MODEL,
)
from mtkd.utils.log import get_logger

log = get_logger(__name__)
DEFAULT_SEEDS = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtkd study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", metavar="DATA", help="dataset YAML (runs are evaluated on its val split)")
    p.add_argument("--out", metavar="DIR", help="study folder (settings, runs, metrics, study.json, report)")
    t = p.add_argument_group("teacher (one of)")
    t.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    t.add_argument(
        "--teacher-epochs", metavar="N", type=int, help="train the teacher in the study for N epochs"
    )
    t.add_argument(
        "--teacher-model", metavar="M", default=DEFAULT_TEACHER_MODEL, help="model of a trained teacher"
    )
    t.add_argument(
        "--teacher-config", metavar="YAML", default=DEFAULT_TEACHER_CONFIG, help="config of a trained teacher"
    )
    s = p.add_argument_group("student (one of)")
    s.add_argument("--student", metavar="CKPT", help="student checkpoint (e.g. from mtkd prune)")
    s.add_argument(
        "--ratio", metavar="R", type=float, help="prune the teacher with this channel ratio in (0, 1)"
    )
    s.add_argument(
        "--target-macs", metavar="M", help="prune the teacher to at most this many MACs (e.g. 2.5e8 or 250M)"
    )
    p.add_argument(
        "--seeds", metavar="K", type=int, help=f"number of seeds 0..K-1 (default {DEFAULT_SEEDS}; at least 2)"
    )
    p.add_argument("--seed-list", metavar="LIST", help="explicit seeds, e.g. 0,1,2 (instead of --seeds)")
    p.add_argument(
        "--epochs", metavar="E", type=int, help="epochs of every run (default: the configs' epochs)"
    )
    p.add_argument(
        "--ft-config",
        metavar="YAML",
        default=DEFAULT_FT_CONFIG,
        help=f"fine-tuning arm (default {DEFAULT_FT_CONFIG})",
    )
    p.add_argument(
        "--kd-config",
        metavar="YAML",
        default=DEFAULT_KD_CONFIG,
        help=f"distillation arm (default {DEFAULT_KD_CONFIG})",
    )
    p.add_argument(
        "--eval-weights",
        choices=("last", "best"),
        default="last",
        help="weights evaluated: last.pt (default; best.pt is chosen on the same val split, biased upwards)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both arms")
    return p


def _seeds(args: argparse.Namespace) -> tuple[int, ...]:
    if args.seed_list is not None:
        if args.seeds is not None:
            raise ConfigError("--seeds / --seed-list: give one of them, not both")
        try:
            return tuple(int(x) for x in args.seed_list.replace(" ", "").split(",") if x)
        except ValueError:
            raise ConfigError(
                f"--seed-list: expected comma-separated integers, got {args.seed_list!r}"
            ) from None
    k = DEFAULT_SEEDS if args.seeds is None else args.seeds
    if k < 2:
        raise ConfigError(f"--seeds: a study needs at least 2 seeds for an interval, got {k}")
    return tuple(range(k))


def plan_from_args(argv: list[str]):
    """Parse and validate the command line into a ``mtkd.study.plan.Plan`` (``ConfigError`` on bad input)."""
    from mtkd.study.plan import Plan

    args = _parser().parse_intermixed_args(argv)
    for flag, v in (("--data", args.data), ("--out", args.out)):
        if not v:
            raise ConfigError(f"{flag}: required")
    target = None
    if args.target_macs is not None:
        from mtkd.prune.prune import _parse_count

        target = _parse_count(args.target_macs)
    return Plan(
        out=Path(args.out),
        data=Path(args.data),
        seeds=_seeds(args),
        epochs=args.epochs,
        ft_config=Path(args.ft_config),
        kd_config=Path(args.kd_config),
        overrides=tuple(args.overrides),
        teacher=Path(args.teacher) if args.teacher else None,
        teacher_epochs=args.teacher_epochs,
        teacher_model=args.teacher_model,
        teacher_config=Path(args.teacher_config),
        student=Path(args.student) if args.student else None,
        ratio=args.ratio,
        target_macs=target,
        eval_weights=args.eval_weights,
    )


def main(argv: list[str] | None = None) -> int:
    from mtkd.study.report import format_text
    from mtkd.study.runner import run_study

    plan = plan_from_args(list(sys.argv[1:] if argv is None else argv))
    try:
        study = run_study(plan)
    except KeyboardInterrupt:
        print(
            f"mtkd study: interrupted; run the same command again to continue (finished runs in {plan.out} are "
            f"kept, an interrupted run resumes from its last.pt)",
            file=sys.stderr,
        )
        return 130
    print(format_text(study))
    print(f"\nstudy: {plan.out / 'study.json'}   report: {plan.out / 'report.html'}")
    return 0
