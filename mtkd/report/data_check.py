"""What data and image size each report entry was evaluated on, and the warnings when they differ.

- ``fill_run_data``: a run folder's metrics (``metrics.json`` or the validation metrics stored in
  ``weights/best.pt``, which record no data YAML) get ``data.yaml`` and ``data.imgsz`` from the run's
  ``config.yaml`` when they lack them, so a run and an ``mtkd eval --out`` JSON of the same data agree.
- ``data_summary``: the Data section's bullets and warnings (different data; different image sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _config_data_yaml(config: Mapping[str, Any]) -> str | None:
    """The run's data YAML (``data: path`` or a nested ``data: {yaml: path}``), resolved as ``mtkd eval`` records
    it when the file is found from here, else as written."""
    data = config.get("data")
    if isinstance(data, Mapping):
        data = data.get("yaml") or data.get("path")
    if not isinstance(data, (str, Path)) or not str(data):
        return None
    return str(Path(data).resolve()) if Path(data).is_file() else str(data)


def _config_imgsz(config: Mapping[str, Any]) -> int | None:
    v = config.get("imgsz")
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def fill_run_data(metrics: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``data.yaml`` / ``data.imgsz`` taken from the run's ``config`` where missing (only when the
    metrics hold a ``data`` section, i.e. an evaluation was recorded); ``metrics`` itself is not changed."""
    data = metrics.get("data")
    if not isinstance(data, dict):
        return metrics
    extra = {"yaml": _config_data_yaml(config), "imgsz": _config_imgsz(config)}
    extra = {k: v for k, v in extra.items() if v is not None and data.get(k) is None}
    return {**metrics, "data": {**data, **extra}} if extra else metrics


def data_summary(entries: Sequence[Any]) -> tuple[list[str], list[str]]:
    """``(bullets, warnings)`` for the Data section of ``entries`` (``ReportEntry``; ``metrics["data"]`` holds
    ``yaml``, ``split``, ``images`` and maybe ``imgsz``)."""
    data = {
        (str(d.get("yaml")), str(d.get("split")), str(d.get("images")))
        for e in entries
        if (d := e.metrics.get("data"))
    }
    bullets = [f"`{y}`, split {s}, {n} images" for y, s, n in sorted(data)] or ["no evaluation data recorded"]
    warnings = []
    if len(data) > 1:
        warnings.append("the models were evaluated on different data; deltas are not comparable.")
    sizes = {
        e.name: d["imgsz"] for e in entries if (d := e.metrics.get("data") or {}).get("imgsz") is not None
    }
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {size} px" for name, size in sizes.items())
        warnings.append(
            f"the models were evaluated at different image sizes ({listed}); deltas are not comparable."
        )
    return bullets, warnings
