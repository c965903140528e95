"""``mtkd report --measure-latency``: time the checkpoints of one report together, interleaved.

Latencies measured by separate ``mtkd eval`` runs come from different moments of a machine's load; compared
side by side they can show two identical architectures a factor 2 apart. This re-times every entry's
checkpoint in one session, round-robin (``mtkd.eval.speed.measure_latency_interleaved``), and replaces the
latency figures of the entries' speed blocks (the throughput of the eval run is kept when the device matches).
The checkpoint of an entry is its metrics JSON's ``model.weights`` (relative paths: from the JSON's folder) or
a run directory's ``weights/best.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtkd.errors import ConfigError
from mtkd.report.inputs import ReportEntry
from mtkd.utils.atomic import write_text

# latency keys a re-measurement replaces; an eval run's other speed keys (throughput) stay when the device matches
_LATENCY_PREFIX = "latency_"


def weights_of(entry: ReportEntry) -> Path:
    """The checkpoint behind ``entry``; ``ConfigError`` naming the entry when there is none."""
    w = (entry.metrics.get("model") or {}).get("weights")
    if w:
        p = Path(w)
        if not p.is_absolute():
            p = (entry.source if entry.source.is_dir() else entry.source.parent) / p
        if p.is_file():
            return p
        raise ConfigError(
            f"{entry.source}: --measure-latency: checkpoint {p} (model.weights of {entry.name}) not found"
        )
    if entry.source.is_dir() and (entry.source / "weights" / "best.pt").is_file():
        return entry.source / "weights" / "best.pt"
    raise ConfigError(
        f"{entry.source}: --measure-latency: no checkpoint for {entry.name} (no model.weights in its metrics, "
        "no weights/best.pt)"
    )


def _imgsz(entry: ReportEntry, ckpt: dict[str, Any], override: int | None) -> int | list[int]:
    if override:
        return override
    for v in (
        (entry.metrics.get("speed") or {}).get("imgsz"),
        (entry.metrics.get("data") or {}).get("imgsz"),
        entry.config.get("imgsz"),
        (ckpt.get("config") or {}).get("imgsz"),
    ):
        if isinstance(v, int) and v > 0:
            return v
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
            return v
    raise ConfigError(
        f"{entry.source}: --measure-latency: no image size recorded for {entry.name}; pass --imgsz"
    )


def _device(entries: list[ReportEntry], override: str | None) -> str:
    if override:
        return override
    recorded = {str(s["device"]) for e in entries if (s := e.metrics.get("speed")) and s.get("device")}
    return recorded.pop() if len(recorded) == 1 else "cpu"


def remeasure_latency(
    entries: list[ReportEntry],
    *,
    device: str | None = None,
    imgsz: int | None = None,
    trust_code: Any = False,
    iters: int = 30,
    rel_tol: float = 0.05,
    budget_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Time every entry's checkpoint interleaved and update ``entry.metrics["speed"]`` in place.

    Args:
        device: where to time (default: the device the entries' eval runs recorded when they agree, else cpu).
        imgsz: input size for all (default: each entry's recorded size).
        budget_s: total time limit (default: ``mtkd.eval.speed.BUDGET_S`` per model).

    Returns ``{entry name: new speed block}``. Params and FLOPs are filled in where the metrics lack them (a
    run directory without an eval), so the same-architecture check of the report can use them.
    """
    import torch

    from mtkd.checkpoint import load_checkpoint
    from mtkd.eval.speed import count_flops, count_params, measure_latency_interleaved
    from mtkd.models import load_model

    if (imgsz is not None and imgsz < 1) or (budget_s is not None and budget_s < 0):
        raise ConfigError(
            f"--imgsz/--speed-budget: expected a size >= 1 and a budget >= 0, got {imgsz}/{budget_s}"
        )
    dev = _device(entries, device)
    try:
        torch_dev = torch.device(dev)
    except RuntimeError:
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {dev!r}") from None
    if torch_dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {dev}: CUDA is not available on this machine (pass --device cpu)")
    models, sizes = {}, {}
    for e in entries:
        path = weights_of(e)
        ckpt = load_checkpoint(path)
        sizes[e.name] = _imgsz(e, ckpt, imgsz)
        models[e.name] = load_model(ckpt, trust_code=trust_code, where=str(path))
    speeds = measure_latency_interleaved(
        models, sizes, device=torch_dev, iters=iters, rel_tol=rel_tol, budget_s=budget_s
    )
    for e in entries:
        new, old = speeds[e.name], e.metrics.get("speed") or {}
        keep = {k: v for k, v in old.items() if not k.startswith(_LATENCY_PREFIX)}
        if str(old.get("device")) != new["device"] or old.get("imgsz") != new["imgsz"]:
            keep = {}  # the eval run's throughput was measured on another setup
        e.metrics["speed"] = {**keep, **new}
        model_info = e.metrics.setdefault("model", {})
        if model_info.get("params") is None:
            model_info["params"] = count_params(models[e.name])
        if model_info.get("flops") is None:
            model_info["flops"] = count_flops(models[e.name], sizes[e.name])
    return speeds


def write_latency_json(path: Path, speeds: dict[str, dict[str, Any]], entries: list[ReportEntry]) -> Path:
    """``{"method", "models": {name: speed block}, "inputs": {name: input path}}``, written atomically."""
    doc = {
        "method": "interleaved" if len(speeds) > 1 else "repeated",
        "models": speeds,
        "inputs": {e.name: str(e.source) for e in entries if e.name in speeds},
    }
    return write_text(path, json.dumps(doc, indent=2), what="latency JSON")
