"""Report inputs: a metrics JSON (``mtkd eval --out``) or a run directory (``results.csv``, ``config.yaml``,
maybe ``metrics.json`` and ``weights/best.pt``), read into one ``ReportEntry`` each."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtkd.errors import ConfigError
from mtkd.report.data_check import fill_run_data

RUN_METRICS = ("metrics.json", "metrics_best.json", "eval/metrics.json")


@dataclass
class ReportEntry:
    """One model in the report.

    Attributes:
        name: label used in tables and legends (unique within a report).
        source: the input path given on the command line.
        metrics: DESIGN.md §4 metrics dict (may be empty for a run without evaluation).
        curves: ``{column: [values per epoch]}`` from ``results.csv`` (``epoch`` included), or ``{}``.
        config: the run's resolved ``config.yaml`` (``{}`` for a plain metrics JSON).
        samples_dir: folder with ``<stem>_gt.png`` / ``<stem>.png`` overlays (``mtkd eval --save-predictions``).
    """

    name: str
    source: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    samples_dir: Path | None = None


def read_json(path: Path) -> dict[str, Any]:
    """A metrics JSON, checked with ``check_metrics``; ``ConfigError`` naming the file (and field) otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: not an mtkd metrics JSON (expected an object as written by mtkd eval --out, "
            f"got a {_json_type(data)})"
        )
    check_metrics(data, path)
    return data


# What the report reads from a metrics JSON (DESIGN.md §4), by section; other keys are kept and ignored.
SECTIONS = ("model", "det", "seg", "speed", "data", "eval", "artifacts")
RESULT_SECTIONS = ("det", "seg", "speed")  # a metrics JSON has at least one (a model may lack a task)
NUMBERS = {
    "model": ("params", "flops", "size_mb"),
    "det": ("mAP50_95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
            "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large", "recall50", "images", "instances"),
    "seg": ("mIoU", "pixel_acc", "mAcc", "pixels"),
    "speed": ("latency_ms_p50", "latency_ms_p90", "latency_ms_mean", "throughput_ips", "throughput_batch",
              "threads", "batch", "latency_ms_iqr", "latency_round_spread", "latency_rounds", "latency_samples",
              "latency_passes_per_round", "latency_rel_tol"),
    "data": ("images", "imgsz"),
}  # fmt: skip
PER_CLASS = {"det": ("per_class_AP50_95", "per_class_AP50"), "seg": ("per_class_IoU",)}


def _json_type(v: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _shown(v: Any) -> str:
    r = json.dumps(v) if isinstance(v, (str, list, dict, bool)) or v is None else repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_metrics(m: dict[str, Any], path: Path | str) -> None:
    """``ConfigError`` (one line, naming ``path`` and the field) unless ``m`` is an mtkd metrics dict.

    It must hold at least one of ``det``, ``seg``, ``speed`` (a seg-only model has no ``det``, ``--no-speed``
    no ``speed``); every section present must be an object and every value the report computes with a
    number or null (per-class values too; ``seg.confusion_matrix`` a square list of number rows).
    """
    task_secs = [k for k in m if str(k).startswith("seg/")]  # several seg tasks: seg/<task>, like seg
    for k in task_secs:
        v = m[k]
        per = v.get("per_class_IoU") if isinstance(v, dict) else None
        bad = (
            not isinstance(v, dict)
            or any(
                v.get(f) is not None and not _is_number(v.get(f))
                for f in (*NUMBERS["seg"], "line_acc", "line_IoU")
            )
            or (
                per is not None
                and not (isinstance(per, dict) and all(x is None or _is_number(x) for x in per.values()))
            )
        )
        if bad:
            raise ConfigError(
                f"{path}: field '{k}': expected an object of seg metrics (numbers or null), got {_shown(v)}"
            )
    if not task_secs and not any(k in m for k in RESULT_SECTIONS):
        keys = ", ".join(map(repr, list(m)[:5])) + (", ..." if len(m) > 5 else "") or "none"
        raise ConfigError(
            f"{path}: not an mtkd metrics JSON (expected 'det', 'seg' and/or 'speed' results as "
            f"written by mtkd eval --out; found keys: {keys})"
        )
    for sec in SECTIONS:
        v = m.get(sec)
        if v is not None and not isinstance(v, dict):
            raise ConfigError(f"{path}: field '{sec}': expected an object, got {_shown(v)}")
    for sec, keys in NUMBERS.items():
        for k in keys:
            v = (m.get(sec) or {}).get(k)
            if v is not None and not _is_number(v):
                raise ConfigError(f"{path}: field '{sec}.{k}': expected a number or null, got {_shown(v)}")
    for sec, keys in PER_CLASS.items():
        for k in keys:
            per = (m.get(sec) or {}).get(k)
            if per is None:
                continue
            if not isinstance(per, dict):
                raise ConfigError(
                    f"{path}: field '{sec}.{k}': expected an object of class name -> number, "
                    f"got {_shown(per)}"
                )
            for name, v in per.items():
                if v is not None and not _is_number(v):
                    raise ConfigError(
                        f"{path}: field '{sec}.{k}.{name}': expected a number or null, got {_shown(v)}"
                    )
    seg = m.get("seg") or {}
    cm = seg.get("confusion_matrix")
    if cm is not None and not (
        isinstance(cm, list)
        and all(isinstance(r, list) and len(r) == len(cm) and all(_is_number(x) for x in r) for r in cm)
    ):
        raise ConfigError(
            f"{path}: field 'seg.confusion_matrix': expected a square list of rows of numbers, "
            f"got {_shown(cm)}"
        )
    absent = seg.get("absent_classes")
    if absent is not None and not (isinstance(absent, list) and all(isinstance(a, str) for a in absent)):
        raise ConfigError(
            f"{path}: field 'seg.absent_classes': expected a list of class names, got {_shown(absent)}"
        )
    rounds = (m.get("speed") or {}).get("latency_round_ms")
    if rounds is not None and not (isinstance(rounds, list) and all(_is_number(x) for x in rounds)):
        raise ConfigError(
            f"{path}: field 'speed.latency_round_ms': expected a list of numbers, got {_shown(rounds)}"
        )
    pred = (m.get("artifacts") or {}).get("predictions_dir")
    if pred is not None and not isinstance(pred, str):
        raise ConfigError(
            f"{path}: field 'artifacts.predictions_dir': expected a folder path, got {_shown(pred)}"
        )
    weights = (m.get("model") or {}).get("weights")
    if weights is not None and not isinstance(weights, str):
        raise ConfigError(f"{path}: field 'model.weights': expected a file path, got {_shown(weights)}")


def read_results_csv(path: Path) -> dict[str, list[float]]:
    """Numeric columns of a ``results.csv`` (one row per epoch); non-numeric cells become NaN."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k is None:
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = math.nan
            cols.setdefault(k.strip(), []).append(x)
    # drop all-NaN (text) columns
    return {k: v for k, v in cols.items() if not all(math.isnan(x) for x in v)}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a readable YAML file ({e})") from None
    return data if isinstance(data, dict) else {}


def _samples_from_metrics(metrics: dict[str, Any], base: Path) -> Path | None:
    pred = (metrics.get("artifacts") or {}).get("predictions_dir")
    if not pred:
        return None
    d = Path(pred) if Path(pred).is_absolute() else base / pred
    return d / "samples" if (d / "samples").is_dir() else None


def _metrics_from_checkpoint(path: Path) -> dict[str, Any]:
    """The validation metrics a training checkpoint stores (no speed/params; size and path are added)."""
    from mtkd.checkpoint import load_checkpoint

    m = load_checkpoint(path).get("metrics")
    if not isinstance(m, dict) or not any(k in ("det", "seg") or str(k).startswith("seg/") for k in m):
        return {}
    check_metrics(m, f"{path} (stored metrics)")
    model = {"weights": str(path), "size_mb": path.stat().st_size / 2**20, **(m.get("model") or {})}
    return {**m, "model": model}


def _run_dir_of(metrics: dict[str, Any]) -> Path | None:
    """The training run a metrics JSON's weights come from (``{run}/weights/*.pt`` next to ``results.csv``),
    so its training curves can be shown; ``None`` when the weights are not from a run."""
    weights = (metrics.get("model") or {}).get("weights")
    if not weights:
        return None
    run = Path(str(weights)).parent.parent
    return run if Path(str(weights)).parent.name == "weights" and (run / "results.csv").is_file() else None


def load_entry(path: str | Path) -> ReportEntry:
    """Read one input; raises ``ConfigError`` naming the path when it is neither a metrics JSON nor a run."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise ConfigError(f"{p}: expected a metrics JSON (mtkd eval --out) or a run directory")
        metrics = read_json(p)
        name = str((metrics.get("model") or {}).get("name") or p.stem)
        run = _run_dir_of(metrics)
        curves = read_results_csv(run / "results.csv") if run is not None else {}
        return ReportEntry(name, p, metrics, curves, samples_dir=_samples_from_metrics(metrics, p.parent))
    if not p.is_dir():
        raise ConfigError(f"{p}: no such file or directory")
    config = _read_yaml(p / "config.yaml") if (p / "config.yaml").is_file() else {}
    curves = read_results_csv(p / "results.csv") if (p / "results.csv").is_file() else {}
    metrics: dict[str, Any] = {}
    samples = None
    for rel in RUN_METRICS:
        if (p / rel).is_file():
            metrics = read_json(p / rel)
            samples = _samples_from_metrics(metrics, (p / rel).parent)
            break
    else:
        if (p / "weights" / "best.pt").is_file():
            metrics = _metrics_from_checkpoint(p / "weights" / "best.pt")
    if not metrics and not curves:
        raise ConfigError(f"{p}: a run directory needs results.csv or metrics.json (found neither)")
    metrics = fill_run_data(metrics, config)  # data YAML / imgsz from config.yaml where the metrics lack them
    name = str(config.get("name") or (metrics.get("model") or {}).get("name") or p.name)
    return ReportEntry(name, p, metrics, curves, config, samples)


def load_entries(paths: list[str]) -> list[ReportEntry]:
    """All inputs, first = baseline; duplicate names get a ``#2``, ``#3`` suffix."""
    entries = [load_entry(p) for p in paths]
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.name] = seen.get(e.name, 0) + 1
        if seen[e.name] > 1:
            e.name = f"{e.name}#{seen[e.name]}"
    return entries
