"""``mtkd report`` / ``tools/report.py``: compare models in a Markdown + self-contained HTML report.

    tools/report.py METRICS_OR_RUN [METRICS_OR_RUN ...] --out DIR [--title T] [--max-samples N]
                    [--measure-latency [--device D] [--imgsz S] [--speed-budget SECONDS]]

Inputs are metrics JSON files (``mtkd eval --out``) and/or run directories (``results.csv``, ``config.yaml``,
optionally ``metrics.json``, else the metrics stored in ``weights/best.pt``); the **first** is the baseline
every delta refers to. Writes ``DIR/report.md`` (images saved as PNG files in ``DIR``) and ``DIR/report.html``
(the same content, images embedded as base64, inline CSS, no scripts or links: it opens offline).

Sections: models and data, summary (mAP50-95, mAP50, mIoU, latency, params, FLOPs, size, each with its
delta), per-class AP and IoU (tables + bar charts), training curves (every column of ``results.csv``),
segmentation confusion matrices (row-normalized), sample predictions side by side (the overlays that
``mtkd eval --save-predictions DIR`` writes to ``DIR/samples``; the metrics JSON links them via
``artifacts.predictions_dir``), and the metric definitions. The data section warns when the models were evaluated
on different data or at different image sizes (``mtkd.report.data_check``; a run folder's data YAML and image
size come from its ``config.yaml``).

Latency figures are checked before they are compared (``mtkd.report.latency``): an unreliable latency (p90/p50
or run-to-run spread too high, or same-architecture models that differ by more than the measured noise) gets
``unreliable [n]`` instead of a delta, a difference within the noise ``≈ within noise [n]``, with the reason
in note ``[n]`` under the summary. ``--measure-latency`` re-times every entry's checkpoint in this process,
interleaved round by round (``mtkd.report.remeasure``), uses those figures, and writes them to
``DIR/latency.json``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtkd.errors import ConfigError, OutputError
from mtkd.report import plots
from mtkd.report.data_check import data_summary
from mtkd.report.document import Document, Image, to_html, to_markdown
from mtkd.report.inputs import ReportEntry, load_entries
from mtkd.report.latency import DEFINITION as LATENCY_FLAGS
from mtkd.report.latency import LatencyCheck
from mtkd.utils.atomic import ensure_parent, write_text

METRIC_DEFINITIONS = [
    "**mAP50-95, mAP50, mAP75, AP small/medium/large, AR100**: COCO box metrics with pycocotools definitions "
    "(101-point interpolated precision, IoU thresholds .50:.05:.95, at most 100 detections per image, size "
    "buckets by ground-truth box area: small < 32², medium < 96² pixels), computed on the original image "
    "resolution. Per-class AP is the mean of the precision array over IoU thresholds and recall points.",
    "**mIoU**: dataset-level — one confusion matrix over every labeled pixel of the split (`ignore_index` "
    "pixels excluded), IoU = TP / (TP + FP + FN) per class; a class absent from both the ground truth and the "
    "predictions is left out of the mean (listed as absent). **Pixel accuracy** = correct / labeled pixels. "
    "Several seg tasks: one matrix per task, and the summary's mIoU is their mean. A lane-line task adds YOLOP's "
    "lane metrics of its line class: **lane line accuracy** = line pixels found / line pixels (YOLOP's "
    "lineAccuracy) and **lane line IoU**. **recall@0.5**: COCO recall at IoU 0.5 with at most 100 detections "
    "per image, averaged over classes.",
    "**Latency**: p50 / p90 wall time of one forward pass at batch 1 after warm-up (no pre/post-processing), "
    "on the device and CPU thread count shown, timed in rounds until the medians of the last 3 rounds agree "
    "within 5% (or a time budget runs out: *not stable*); p50/p90 are over those last rounds. Models timed "
    "together (`mtkd report --measure-latency`) run interleaved, round by round. **FLOPs**: one forward pass at batch 1 counted by "
    "`torch.utils.flop_counter` (a multiply-add counts 2). **Size**: checkpoint file size in MiB.",
    "Accuracy values are percentages; deltas are percentage points vs the baseline (first input); other "
    "deltas are absolute and relative. `-` means undefined (e.g. no ground truth for that class or bucket).",
    LATENCY_FLAGS,
]

# (column, getter, kind): kind "pct" → shown in %, delta in points; "num" → value, delta abs + relative
SUMMARY: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("mAP50-95 (%)", lambda m: (m.get("det") or {}).get("mAP50_95"), "pct"),
    ("mAP50 (%)", lambda m: (m.get("det") or {}).get("mAP50"), "pct"),
    ("mIoU (%)", lambda m: _miou(m), "pct"),
    ("latency p50 (ms)", lambda m: (m.get("speed") or {}).get("latency_ms_p50"), "num"),
    ("params (M)", lambda m: _scaled((m.get("model") or {}).get("params"), 1e-6), "num"),
    ("GFLOPs", lambda m: _scaled((m.get("model") or {}).get("flops"), 1e-9), "num"),
    ("size (MiB)", lambda m: (m.get("model") or {}).get("size_mb"), "num"),
]
SPEED_KEYS = {"latency p50 (ms)": "latency_ms_p50"}  # summary columns the latency check may flag


# rows of the "All metrics" table: (label, section, key, kind)
DETAIL = [
    ("mAP50-95 (%)", "det", "mAP50_95", "pct"), ("mAP50 (%)", "det", "mAP50", "pct"),
    ("mAP75 (%)", "det", "mAP75", "pct"), ("AP small (%)", "det", "mAP_small", "pct"),
    ("AP medium (%)", "det", "mAP_medium", "pct"), ("AP large (%)", "det", "mAP_large", "pct"),
    ("AR@100 (%)", "det", "AR100", "pct"), ("recall@0.5 (%)", "det", "recall50", "pct"),
    ("mIoU (%)", "seg", "mIoU", "pct"),
    ("pixel accuracy (%)", "seg", "pixel_acc", "pct"), ("mean class accuracy (%)", "seg", "mAcc", "pct"),
    ("latency p50 (ms)", "speed", "latency_ms_p50", "num"), ("latency p90 (ms)", "speed", "latency_ms_p90", "num"),
    ("throughput (img/s)", "speed", "throughput_ips", "num"),
]  # fmt: skip


def seg_task_keys(entries: list[ReportEntry]) -> list[str]:
    """The ``seg/<task>`` sections of several-task models, in first-seen order."""
    keys: list[str] = []
    for e in entries:
        keys += [k for k in e.metrics if str(k).startswith("seg/") and k not in keys]
    return keys


def _task_rows(key: str) -> list[tuple[str, str, str, str]]:
    """``DETAIL`` rows of seg task ``key`` (``seg/<task>``): its lane metrics (line tasks), mIoU, accuracies."""
    t = key.split("/", 1)[1]
    return [
        (f"{t}: lane line accuracy (%)", key, "line_acc", "pct"), (f"{t}: lane line IoU (%)", key, "line_IoU", "pct"),
        (f"{t}: mIoU (%)", key, "mIoU", "pct"), (f"{t}: pixel accuracy (%)", key, "pixel_acc", "pct"),
    ]  # fmt: skip


def _miou(m: dict[str, Any]) -> float | None:
    """The single task's mIoU, or the mean mIoU of several seg tasks (``seg/<task>``)."""
    if m.get("seg"):
        return m["seg"].get("mIoU")
    vals = [v.get("mIoU") for k, v in m.items() if str(k).startswith("seg/") and isinstance(v, dict)]
    return sum(vals) / len(vals) if vals and None not in vals else None


def _scaled(v: Any, f: float) -> float | None:
    return None if v is None else float(v) * f


def fmt_value(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if kind == "pct" else f"{v:.3f}"


def fmt_cell(v: float | None, base: float | None, kind: str, is_baseline: bool) -> str:
    """``"45.20 (+1.30)"`` (pct: delta in points) or ``"1.200 (-0.300, -20.0%)"`` (num); baseline: value only."""
    s = fmt_value(v, kind)
    if is_baseline or v is None or base is None:
        return s
    d = v - base
    if kind == "pct":
        return f"{s} ({100 * d:+.2f})"
    rel = f", {100 * d / base:+.1f}%" if base else ""
    return f"{s} ({d:+.3f}{rel})"


def _speed_cell(check: LatencyCheck, j: int, key: str | None, v: Any, base: Any, kind: str) -> str:
    """``fmt_cell``, unless the latency check flags this speed figure (unreliable, within noise, ...)."""
    flagged = check.cell(j, key, fmt_value(v, kind)) if key and v is not None else None
    return flagged or fmt_cell(v, base, kind, j == 0)


def _speed_section(doc: Document, entries: list[ReportEntry], check: LatencyCheck) -> None:
    """The notes the flagged latency cells refer to, and how each model's speed was measured."""
    notes = check.notes()
    if notes:
        doc.para(
            "**Latency notes** (a flagged latency is not a measurement to act on: time the models together "
            "with `mtkd report ... --measure-latency` on an otherwise idle machine):"
        )
        doc.bullets(notes)
    speeds = [(j, e.name, e.metrics["speed"]) for j, e in enumerate(entries) if e.metrics.get("speed")]
    if speeds:
        doc.para(
            "Speed measured on: "
            + "; ".join(
                f"{n}: {s.get('device')}, {s.get('threads')} threads, {s.get('imgsz')} px, p90 "
                f"{fmt_value(s.get('latency_ms_p90'), 'num')} ms ({check.measured_text(j)})"
                + (
                    f", {s['throughput_ips']:.1f} img/s at batch {s.get('throughput_batch')}"
                    if s.get("throughput_ips")
                    else ""
                )
                for j, n, s in speeds
            )
            + "."
        )


def _per_class(entries: list[ReportEntry], task: str, key: str) -> dict[str, dict[str, float | None]]:
    return {
        e.name: dict((e.metrics.get(task) or {}).get(key) or {})
        for e in entries
        if (e.metrics.get(task) or {}).get(key)
    }


def _per_class_table(doc: Document, values: dict[str, dict[str, float | None]]) -> None:
    models = list(values)
    classes: list[str] = []
    for per in values.values():
        classes += [c for c in per if c not in classes]
    base = values[models[0]]
    rows = [
        [c] + [fmt_cell(values[m].get(c), base.get(c), "pct", j == 0) for j, m in enumerate(models)]
        for c in classes
    ]
    doc.table(["class"] + models, rows)


def _model_bullets(e: ReportEntry) -> str:
    m = e.metrics.get("model") or {}
    parts = [f"**{e.name}**: from `{e.source}`"]
    if m.get("weights"):
        parts.append(f"weights `{m['weights']}`")
    if m.get("adapter"):
        parts.append(f"adapter {m['adapter']}")
    if m.get("params") is not None:
        parts.append(f"{m['params'] / 1e6:.3f} M params")
    for key, label in (("model", "model"), ("teacher", "teacher"), ("student", "initial student")):
        v = e.config.get(key)
        if v and not isinstance(v, dict):
            parts.append(f"{label} `{v}`")
    if e.config.get("teacher"):
        kd = {k: e.config[k] for k in ("temperature", "alpha_seg", "alpha_det") if k in e.config}
        if kd:
            parts.append("distillation " + ", ".join(f"{k}={v}" for k, v in kd.items()))
    d = e.metrics.get("data") or {}
    if d:
        parts.append(
            f"evaluated on `{d.get('yaml', '?')}` split {d.get('split', '?')} ({d.get('images', '?')} images)"
        )
    return "; ".join(parts)


_LOSS = re.compile(r"loss|(^|[/_])kd($|[/_])", re.I)
_OTHER = re.compile(r"(^|[/_])(lr\d*|time|epoch_time|seconds)($|[/_])", re.I)
_COUNTS = re.compile(r"(^|/)(epoch|step|images|instances|pixels)$", re.I)  # not plotted


def _curve_groups(entries: list[ReportEntry]) -> dict[str, list[str]]:
    cols: list[str] = []
    for e in entries:
        cols += [c for c in e.curves if c not in cols and not _COUNTS.search(c)]
    groups = {
        "Losses per term": [c for c in cols if _LOSS.search(c)],
        "Metrics": [c for c in cols if not _LOSS.search(c) and not _OTHER.search(c)],
        "Learning rate and time": [c for c in cols if not _LOSS.search(c) and _OTHER.search(c)],
    }
    return {k: v for k, v in groups.items() if v}


def _sample_rows(entries: list[ReportEntry], max_samples: int) -> list[list[Image]]:
    with_samples = [e for e in entries if e.samples_dir is not None]
    if not with_samples:
        return []
    stems = [p.name[: -len("_gt.png")] for p in sorted(with_samples[0].samples_dir.glob("*_gt.png"))]
    stems = [s for s in stems if all((e.samples_dir / f"{s}.png").is_file() for e in with_samples)]
    rows = []
    for k, s in enumerate(stems[:max_samples]):
        row = [
            Image(
                f"sample{k}_gt.png",
                (with_samples[0].samples_dir / f"{s}_gt.png").read_bytes(),
                f"{s}: ground truth",
            )
        ]
        row += [
            Image(f"sample{k}_m{j}.png", (e.samples_dir / f"{s}.png").read_bytes(), f"{s}: {e.name}")
            for j, e in enumerate(with_samples)
        ]
        rows.append(row)
    return rows


def build_document(entries: list[ReportEntry], title: str = "mtkd report", max_samples: int = 4) -> Document:
    """Assemble every section of the report for ``entries`` (first = baseline)."""
    doc = Document(title)
    base = entries[0]
    doc.heading("Models")
    doc.para(f"Baseline for every delta: **{base.name}**.")
    doc.bullets([_model_bullets(e) for e in entries])
    doc.heading("Data")
    bullets, warnings = data_summary(entries)
    doc.bullets(bullets)
    for warning in warnings:
        doc.para(f"**Warning**: {warning}")
    doc.heading("Summary")
    check = LatencyCheck([(e.name, e.metrics) for e in entries])
    rows = []
    for j, e in enumerate(entries):
        rows.append(
            [e.name]
            + [
                _speed_cell(check, j, SPEED_KEYS.get(col), get(e.metrics), get(base.metrics), kind)
                for col, get, kind in SUMMARY
            ]
        )
    doc.table(["model"] + [c for c, _, _ in SUMMARY], rows)
    detail = []  # built before the latency notes are written: its cells may add notes
    task_rows = [r for k in seg_task_keys(entries) for r in _task_rows(k)]
    for label, sec, key, kind in [*DETAIL[:8], *task_rows, *DETAIL[8:]]:
        vals = [(e.metrics.get(sec) or {}).get(key) for e in entries]
        if any(v is not None for v in vals):
            speed_key = key if sec == "speed" else None
            detail.append(
                [label] + [_speed_cell(check, j, speed_key, v, vals[0], kind) for j, v in enumerate(vals)]
            )
    _speed_section(doc, entries, check)
    if detail:
        doc.heading("All metrics")
        doc.table(["metric"] + [e.name for e in entries], detail)
    for task, key, head, ylabel, fname in (
        ("det", "per_class_AP50_95", "Per-class AP50-95 (%)", "AP50-95 (%)", "per_class_ap.png"),
        ("det", "per_class_AP50", "Per-class AP50 (%)", "AP50 (%)", "per_class_ap50.png"),
        ("seg", "per_class_IoU", "Per-class IoU (%)", "IoU (%)", "per_class_iou.png"),
        *(
            (k, "per_class_IoU", f"Per-class IoU, {k[4:]} (%)", "IoU (%)", f"per_class_iou_{k[4:]}.png")
            for k in seg_task_keys(entries)
        ),
    ):
        values = _per_class(entries, task, key)
        if values:
            doc.heading(head)
            _per_class_table(doc, values)
            doc.image(Image(fname, plots.per_class_bars(values, title=head, ylabel=ylabel), head))
            if task.startswith("seg"):
                absent = [
                    f"{e.name}: {', '.join(a)}"
                    for e in entries
                    if (a := (e.metrics.get(task) or {}).get("absent_classes"))
                ]
                if absent:
                    doc.para(
                        "Absent from both ground truth and predictions (left out of mIoU): "
                        + "; ".join(absent)
                        + "."
                    )
    runs = [e for e in entries if e.curves]
    if runs:
        doc.heading("Training curves")
        doc.para("From each run's `results.csv`, one value per epoch.")
        for k, (group, cols) in enumerate(_curve_groups(runs).items()):
            png = plots.training_curves({e.name: e.curves for e in runs}, cols)
            doc.image(Image(f"curves{k}.png", png, group))
    cms = [e for e in entries if (e.metrics.get("seg") or {}).get("confusion_matrix")]
    if cms:
        doc.heading("Segmentation confusion matrix")
        doc.para("Rows: ground truth, columns: prediction, normalized by row (pixels, whole split).")
        imgs = []
        for j, e in enumerate(cms):
            seg = e.metrics["seg"]
            names = list(seg.get("per_class_IoU") or (e.metrics.get("model") or {}).get("seg_names") or [])
            if len(names) != len(seg["confusion_matrix"]):
                names = [str(i) for i in range(len(seg["confusion_matrix"]))]
            imgs.append(
                Image(
                    f"confusion{j}.png",
                    plots.confusion_matrix(seg["confusion_matrix"], names, title=e.name),
                    e.name,
                )
            )
        doc.image_row(imgs)
    samples = _sample_rows(entries, max_samples)
    if samples:
        doc.heading("Sample predictions")
        doc.para(
            "Ground truth, then each model (boxes with score >= 0.25, mask overlay), original resolution."
        )
        for row in samples:
            doc.image_row(row)
    doc.heading("Metric definitions")
    doc.bullets(METRIC_DEFINITIONS)
    return doc


def _check_out_dir(out: Path) -> None:
    """Create ``out``; ``OutputError`` (one line) when it is a file or cannot be written to."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: the report output is an existing file; expected a folder")
    ensure_parent(out / "report.md", "report")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write the report there (permission denied)")


def write_report(
    entries: list[ReportEntry], out_dir: str | Path, *, title: str = "mtkd report", max_samples: int = 4
) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (+ PNGs) and ``out_dir/report.html``; returns both paths.

    Every file is written atomically (``mtkd.utils.atomic``): a failed write raises ``OutputError`` naming the
    path and leaves the previous file there untouched. The document is built before anything is written.
    """
    out = Path(out_dir)
    doc = build_document(entries, title, max_samples)
    md, html = out / "report.md", out / "report.html"
    _check_out_dir(out)
    write_text(md, to_markdown(doc, out), what="Markdown report")
    write_text(html, to_html(doc), what="HTML report")
    return md, html


def main(argv: list[str]) -> int:
    from mtkd.models.trust import add_trust_code_argument, trust_from_args

    p = argparse.ArgumentParser(
        prog="mtkd report", description="HTML + Markdown report comparing models (first input = baseline)."
    )
    p.add_argument(
        "inputs", nargs="+", metavar="METRICS_OR_RUN", help="metrics JSON files and/or run directories"
    )
    p.add_argument("--out", required=True, help="output folder (report.md, report.html, PNGs)")
    p.add_argument("--title", default="mtkd report")
    p.add_argument("--max-samples", type=int, default=4, help="sample images shown (default: 4)")
    p.add_argument(
        "--measure-latency",
        action="store_true",
        help="re-time every model's checkpoint here, interleaved round by round, and report those "
        "latencies (also written to DIR/latency.json)",
    )
    p.add_argument(
        "--device", help="with --measure-latency: where to time (default: as recorded by eval, else cpu)"
    )
    p.add_argument("--imgsz", type=int, help="with --measure-latency: input size (default: as recorded)")
    p.add_argument(
        "--speed-budget",
        type=float,
        help="with --measure-latency: seconds after which timing rounds stop (default: 30 per model)",
    )
    add_trust_code_argument(p)
    args = p.parse_args(argv)
    entries = load_entries(args.inputs)
    speeds = None
    if args.measure_latency:
        from mtkd.report.remeasure import remeasure_latency

        _check_out_dir(Path(args.out))  # fail before a long measurement
        speeds = remeasure_latency(
            entries,
            device=args.device,
            imgsz=args.imgsz,
            trust_code=trust_from_args(args.trust_code),
            budget_s=args.speed_budget,
        )
    elif args.device or args.imgsz or args.speed_budget is not None:
        raise ConfigError("--device, --imgsz and --speed-budget only apply with --measure-latency")
    md, html = write_report(entries, args.out, title=args.title, max_samples=args.max_samples)
    if speeds is not None:
        from mtkd.report.remeasure import write_latency_json

        print(
            f"latency (interleaved) written to {write_latency_json(Path(args.out) / 'latency.json', speeds, entries)}"
        )
    print(f"report written to {html} and {md}")
    return 0
