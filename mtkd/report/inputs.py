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
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a metrics JSON object (mtkd eval --out), got {type(data).__name__}")
    return data


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
    from mtkd.engine.checkpoint import load_checkpoint

    m = load_checkpoint(path).get("metrics")
    if not isinstance(m, dict) or not ("det" in m or "seg" in m):
        return {}
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
