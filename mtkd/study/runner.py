"""Run a study (``run_study(plan)``): the teacher (given, or trained), the student (given, or the teacher pruned
with ``mtkd prune``), then per seed the fine-tuning and the distillation run, each evaluated on the val split; then
``study.json`` and the report.

Resumable: a step whose output exists is not run again (teacher/student/run ``metrics/*.json``, ``student.pt``);
an interrupted training run continues from its ``weights/last.pt`` (``resume=true``: bitwise the run it would
have been), a finished one is only evaluated. The settings recorded in the folder must match the command's
(``mtkd.study.plan.check_settings``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mtkd.config import TrainConfig
from mtkd.errors import MtkdError
from mtkd.study import stats
from mtkd.study.plan import (
    ARMS,
    SPLIT,
    Plan,
    arm_config,
    check_same_recipe,
    check_settings,
    run_name,
    settings,
    teacher_config,
)
from mtkd.utils.atomic import write_text
from mtkd.utils.log import get_logger

log = get_logger(__name__)
STUDY_VERSION = 1


def check_data(plan: Plan) -> None:
    """The dataset YAML is valid and has a val split (the study evaluates there, never on a test split)."""
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.errors import ConfigError

    spec = load_data_yaml(plan.data)
    if SPLIT not in spec.splits:
        raise ConfigError(
            f"--data: {plan.data} has no '{SPLIT}' split (defined: {', '.join(spec.splits)}); a study evaluates "
            f"on the val split, never on a test split"
        )


def train(cfg: TrainConfig) -> float:
    """Train ``cfg`` into ``cfg.run_dir``: fresh (overwriting a run that never saved ``last.pt``), resumed from
    ``last.pt``, or not at all when ``last.pt`` holds the finished run. Returns the training seconds (all
    sessions)."""
    from mtkd.checkpoint import load_checkpoint
    from mtkd.engine.trainer import Trainer

    last = cfg.run_dir / "weights" / "last.pt"
    if last.is_file():
        st = load_checkpoint(last).get("train") or {}
        if int(st.get("epoch", 0)) >= cfg.epochs and not st.get("eval_pending") and not st.get("step"):
            log.info(f"{cfg.run_dir}: training already finished, kept")
            return float(st.get("elapsed") or 0.0)
        log.info(f"{cfg.run_dir}: resuming the interrupted run after epoch {st.get('epoch')}")
        cfg = cfg.replace(resume=True)
    else:
        cfg = cfg.replace(exist_ok=True)
    trainer = Trainer(cfg)
    trainer.fit()
    return float(trainer.elapsed())


def trust_args(cfg: TrainConfig) -> list[str]:
    """``--trust-code`` arguments of the eval/prune commands for the config's ``trust_code``."""
    if cfg.trust_code is True:
        return ["--trust-code", "*"]
    return [a for path in cfg.trust_code or () for a in ("--trust-code", path)]


def evaluate(weights: Path, cfg: TrainConfig, name: str) -> dict[str, Any]:
    """``mtkd eval`` of ``weights`` on the val split at the run's imgsz/batch/device/NMS settings (no speed)."""
    from mtkd.eval.cli import _parser as eval_parser
    from mtkd.eval.cli import run_eval

    argv = {
        "--weights": weights,
        "--data": cfg.data,
        "--split": SPLIT,
        "--imgsz": cfg.imgsz,
        "--batch": cfg.batch,
        "--workers": cfg.workers,
        "--device": cfg.device,
        "--conf": cfg.conf,
        "--iou": cfg.iou,
        "--name": name,
    }
    args = [str(x) for kv in argv.items() for x in kv]
    return run_eval(eval_parser().parse_args([*args, "--no-speed", "--quiet", *trust_args(cfg)]))


def scores(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The study's metrics (``mAP50``, ``mAP50_95``, ``mIoU``) from an ``mtkd eval`` metrics dict."""
    det, seg = metrics.get("det") or {}, metrics.get("seg") or {}
    return {"mAP50": det.get("mAP50"), "mAP50_95": det.get("mAP50_95"), "mIoU": seg.get("mIoU")}


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MtkdError(f"{path}: unreadable metrics ({e}); delete it to re-run that step") from None


def _measured(
    plan: Plan, name: str, weights: Path, cfg: TrainConfig, work: Any, **info: Any
) -> dict[str, Any]:
    """The metrics record ``name``: read when ``metrics/{name}.json`` exists; else ``work()`` (returns
    ``{step: seconds}``: training, pruning), evaluate ``weights``, write the record (atomically) and return it.
    The record is the ``mtkd eval`` metrics dict plus ``study``: name, weights, ``info`` and the seconds."""
    path = plan.metrics_path(name)
    if path.is_file():
        log.info(f"{name}: finished earlier ({path}), kept")
        return _read_metrics(path)
    times = dict(work())
    t0 = time.perf_counter()
    metrics = evaluate(weights, cfg, name)
    times["eval_s"] = time.perf_counter() - t0
    times["wall_s"] = sum(v for v in times.values() if v is not None)
    record = {**metrics, "study": {"name": name, "weights": str(weights), **info, **times}}
    write_text(path, json.dumps(record, indent=2), what="metrics JSON")
    s = scores(metrics)
    log.info(
        f"{name}: mAP50 {_pct(s['mAP50'])}  mAP50-95 {_pct(s['mAP50_95'])}  mIoU {_pct(s['mIoU'])}  "
        f"({times['wall_s']:.0f}s)"
    )
    return record


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _teacher(plan: Plan, teacher_cfg: TrainConfig | None, ref: TrainConfig) -> dict[str, Any]:
    def work() -> dict[str, float | None]:
        if teacher_cfg is None:
            return {"train_s": None}
        log.info(f"teacher: training {plan.teacher_model} (epochs={plan.teacher_epochs})")
        return {"train_s": train(teacher_cfg)}

    return _measured(plan, "teacher", plan.teacher_weights, teacher_cfg or ref, work)


def _student(plan: Plan, ref: TrainConfig) -> dict[str, Any]:
    def work() -> dict[str, float | None]:
        if plan.student is not None or plan.student_weights.is_file():
            return {"prune_s": None}
        from mtkd.demo import _run

        how = (
            ["--ratio", str(plan.ratio)]
            if plan.ratio is not None
            else ["--target-macs", str(plan.target_macs)]
        )
        log.info(f"student: pruning {plan.teacher_weights} ({' '.join(how)})")
        t0 = time.perf_counter()
        argv = ["--weights", str(plan.teacher_weights), "--out", str(plan.student_weights), *how]
        _run("prune", [*argv, "--imgsz", str(ref.imgsz), *trust_args(ref)])
        return {"prune_s": time.perf_counter() - t0}

    return _measured(plan, "student", plan.student_weights, ref, work)


def _arm_run(plan: Plan, arm: str, seed: int) -> dict[str, Any]:
    cfg = arm_config(plan, arm, seed)
    weights = cfg.run_dir / "weights" / f"{plan.eval_weights}.pt"

    def work() -> dict[str, float | None]:
        log.info(f"{run_name(arm, seed)}: training (epochs={cfg.epochs})")
        return {"train_s": train(cfg)}

    return _measured(
        plan, run_name(arm, seed), weights, cfg, work, arm=arm, seed=seed, run_dir=str(cfg.run_dir)
    )


def assemble(
    plan: Plan, recorded: dict[str, Any], teacher: dict, student: dict, runs: dict[str, list[dict]]
) -> dict[str, Any]:
    """The ``study.json`` dict (schema: ``mtkd.study`` package docstring)."""
    t_scores, s_scores = scores(teacher), scores(student)
    arms: dict[str, Any] = {}
    for arm in ARMS:
        per_seed = [scores(r) for r in runs[arm]]
        walls = [float(r["study"].get("wall_s") or 0.0) for r in runs[arm]]
        arms[arm] = {
            "config": str(plan.ft_config if arm == "finetune" else plan.kd_config),
            "runs": [r["study"].get("run_dir") for r in runs[arm]],
            "wall_s": sum(walls),
            "wall_s_per_seed": walls,
            **{m: stats.summarize([s[m] for s in per_seed]) for m in stats.METRICS},
        }
    diff = {
        m: stats.paired_difference(arms["distill"][m]["values"], arms["finetune"][m]["values"])
        for m in stats.METRICS
    }
    gap = {
        m: stats.gap_recovered(t_scores[m], arms["finetune"][m]["mean"], arms["distill"][m]["mean"])
        for m in stats.METRICS
    }

    def model(rec: dict, sc: dict) -> dict[str, Any]:
        st = rec.get("study") or {}
        info = {"weights": st.get("weights"), "params": (rec.get("model") or {}).get("params")}
        return {**info, **sc, **{k: v for k, v in st.items() if k.endswith("_s")}}

    return {
        "version": STUDY_VERSION,
        "split": SPLIT,
        "data": str(plan.data),
        "seeds": list(plan.seeds),
        "epochs": recorded["epochs"],
        "eval_weights": plan.eval_weights,
        "metrics": list(stats.METRICS),
        "confidence": stats.CONFIDENCE,
        "teacher": model(teacher, t_scores),
        "student": model(student, s_scores),
        "arms": arms,
        "diff": diff,
        "gap_recovered": gap,
        "verdicts": {m: stats.verdict_line(m, diff[m]) for m in stats.METRICS},
        "settings": recorded,
    }


def prepare(plan: Plan) -> tuple[dict[str, Any], TrainConfig, TrainConfig | None]:
    """Validate everything before anything runs: data, both arms' configs (same recipe), the teacher's config;
    record or check the folder's settings. Returns ``(settings, fine-tuning config of the first seed, teacher
    config or None)``."""
    check_data(plan)
    ft, kd = (arm_config(plan, arm, plan.seeds[0]) for arm in ARMS)
    check_same_recipe(ft, kd, plan.ft_config, plan.kd_config)
    if kd.alpha_seg == 0 and kd.alpha_det == 0 and not kd.distill.feat_kd.names:
        log.warning(
            f"{plan.kd_config}: alpha_seg = alpha_det = 0 and no feature KD: the arms are the same recipe"
        )
    teacher_cfg = teacher_config(plan) if plan.teacher is None else None
    recorded = check_settings(plan.out, settings(plan, ft, kd, teacher_cfg))
    return recorded, ft, teacher_cfg


def run_study(plan: Plan) -> dict[str, Any]:
    """Run (or finish) the study of ``plan``; writes ``study.json``, ``report.html`` and ``report.md`` in
    ``plan.out`` and returns the ``study.json`` dict."""
    from mtkd.study.report import write_report

    recorded, ref, teacher_cfg = prepare(plan)
    teacher = _teacher(plan, teacher_cfg, ref)
    student = _student(plan, ref)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in plan.seeds:  # both arms of a seed before the next seed: an interrupted study has pairs
        for arm in ARMS:
            runs[arm].append(_arm_run(plan, arm, seed))
    study = assemble(plan, recorded, teacher, student, runs)
    write_text(plan.out / "study.json", json.dumps(study, indent=2), what="study JSON")
    write_report(study, plan.out)
    return study
