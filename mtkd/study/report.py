"""The study's report: ``report.md`` and a self-contained ``report.html`` (``mtkd.report.document``: inline CSS, no
images, scripts or links: it opens offline), and the same tables as plain text for the console.

Sections: what was compared; per model mean ± std of mAP50, mAP50-95 and mIoU with wall times; the paired
distillation − fine-tuning difference per metric with its 95% interval and the fraction of the teacher–fine-tuning
gap recovered; one verdict line per metric; the per-seed table; how the numbers are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtkd.report.document import Document, to_html, to_markdown
from mtkd.study.plan import ARM_NAMES, ARMS
from mtkd.study.stats import CONFIDENCE, LABELS, METRICS
from mtkd.utils.atomic import write_text

TITLE = "mtkd study: fine-tuning vs distillation"
Table = tuple[str, list[str], list[list[str]]]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _pp(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.2f}"


def _mean_std(s: dict[str, Any]) -> str:
    return "-" if s.get("mean") is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def _params(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _count(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _gap(v: float | None) -> str:
    return "n/a (no teacher–FT gap)" if v is None else f"{100 * v:.0f}%"


def summary_table(study: dict[str, Any]) -> Table:
    header = ["model", *(f"{LABELS[m]} (%)" for m in METRICS), "params (M)", "wall time"]
    t, s = study["teacher"], study["student"]
    rows = [
        ["teacher", *(_pct(t.get(m)) for m in METRICS), _params(t.get("params")), _secs(t.get("wall_s"))],
        [
            "student (start)",
            *(_pct(s.get(m)) for m in METRICS),
            _params(s.get("params")),
            _secs(s.get("wall_s")),
        ],
    ]
    n = len(study["seeds"])
    for arm in ARMS:
        a = study["arms"][arm]
        wall = f"{_secs(a['wall_s'])} ({_secs(a['wall_s'] / max(n, 1))}/seed)"
        rows.append([ARM_NAMES[arm], *(_mean_std(a[m]) for m in METRICS), "", wall])
    return f"Results on the val split (mean ± std over {n} seeds)", header, rows


def difference_table(study: dict[str, Any]) -> Table:
    level = f"{round(100 * CONFIDENCE)}%"
    header = ["metric", "KD − FT (pp)", f"{level} interval (pp)", "gap recovered", "verdict"]
    rows = []
    for m in METRICS:
        d = study["diff"][m]
        ci = "-" if d.get("ci95") is None else f"[{_pp(d['ci95'][0])}, {_pp(d['ci95'][1])}]"
        rows.append([LABELS[m], _pp(d.get("mean")), ci, _gap(study["gap_recovered"][m]), d["verdict"]])
    return "Distillation − fine-tuning, paired by seed", header, rows


def seed_table(study: dict[str, Any]) -> Table:
    header = ["seed"]
    for m in METRICS:
        header += [f"FT {LABELS[m]}", f"KD {LABELS[m]}", "Δ (pp)"]
    rows = []
    for i, seed in enumerate(study["seeds"]):
        row = [str(seed)]
        for m in METRICS:
            ft, kd = study["arms"]["finetune"][m]["values"][i], study["arms"]["distill"][m]["values"][i]
            row += [_pct(ft), _pct(kd), "-" if ft is None or kd is None else _pp(kd - ft)]
        rows.append(row)
    return "Per seed (%)", header, rows


def tables(study: dict[str, Any]) -> list[Table]:
    return [summary_table(study), difference_table(study), seed_table(study)]


def _describe(study: dict[str, Any]) -> list[str]:
    st = study["settings"]
    teacher = st["teacher"]
    if "trained" in teacher:
        tr = teacher["trained"]
        t_text = f"trained by the study: `{tr.get('model')}`, {_count(tr.get('epochs'), 'epoch')}"
    else:
        t_text = f"`{teacher['checkpoint']}`"
    student = st["student"]
    if "pruned" in student:
        p = student["pruned"]
        how = (
            f"channel ratio {p['ratio']}"
            if p.get("ratio") is not None
            else f"target MACs {p['target_macs']:.4g}"
        )
        s_text = f"the teacher pruned with Torch-Pruning ({p['importance']} importance, {how})"
    else:
        s_text = f"`{student['checkpoint']}`"
    arms = study["arms"]
    return [
        f"**data**: `{study['data']}`, evaluated on the `{study['split']}` split (never a test split)",
        f"**teacher**: {t_text}",
        f"**student**: {s_text}",
        f"**fine-tuning (FT)**: `{arms['finetune']['config']}`; **distillation (KD)**: `{arms['distill']['config']}`",
        f"**runs**: {_count(study['epochs'], 'epoch')} each, seeds {', '.join(map(str, study['seeds']))}; every setting but "
        f"the distillation ones is the same in both arms; evaluated weights: `{study['eval_weights']}.pt`",
    ]


METHOD = [
    "Each seed gives one fine-tuning and one distillation run from the same student weights, with the same data "
    "order and augmentation: the two runs of a seed are a pair.",
    "mean ± std: over seeds; std is the sample standard deviation (n − 1).",
    "KD − FT: mean of the per-seed differences d = KD − FT; interval: Student t, mean ± t(0.975, n − 1) · "
    "std(d) / √n (`scipy.stats.t`). pp = percentage points.",
    "Verdict: 'not distinguishable from noise' when the interval includes 0, else the arm the whole interval "
    "favours. Few seeds give wide intervals: add seeds (the study resumes) to narrow them.",
    "Gap recovered: (mean KD − mean FT) / (teacher − mean FT); 100% = distillation reaches the teacher, 0% = no "
    "gain; n/a when fine-tuning already matches the teacher.",
]


def build_document(study: dict[str, Any]) -> Document:
    doc = Document(TITLE)
    doc.bullets(_describe(study))
    for title, header, rows in tables(study)[:2]:
        doc.heading(title)
        doc.table(header, rows)
    doc.heading("Verdict")
    doc.bullets(
        [f"**{line.split(':', 1)[0]}**:{line.split(':', 1)[1]}" for line in study["verdicts"].values()]
    )
    title, header, rows = seed_table(study)
    doc.heading(title)
    doc.table(header, rows)
    doc.heading("Method")
    doc.bullets(METHOD)
    return doc


def write_report(study: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` (atomically); returns both paths."""
    out = Path(out)
    doc = build_document(study)
    md = write_text(out / "report.md", to_markdown(doc, out), what="Markdown report")
    html = write_text(out / "report.html", to_html(doc), what="HTML report")
    return md, html


def format_text(study: dict[str, Any]) -> str:
    """The report's tables and verdicts as plain text (what ``mtkd study`` prints)."""
    lines: list[str] = []
    for title, header, rows in tables(study):
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += ["", title]
        for r in [header, *rows]:
            lines.append(
                "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            )
    lines += ["", "Verdict", *study["verdicts"].values()]
    return "\n".join(lines)
