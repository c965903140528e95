"""Run logging: ``results.csv`` (one row per epoch, rewritten atomically), TensorBoard, progress-bar text."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtkd.utils.atomic import atomic_write

#: the terms shown in the progress bar, and the first loss columns of ``results.csv``, in this order
SHOWN = ("loss", "seg_loss", "det_loss", "seg_kd", "det_kd", "feat_kd")


class ResultsCSV:
    """``results.csv`` with one row per epoch and every term/metric as a column.

    The whole file is rewritten through the atomic writer (``mtkd.utils.atomic``) after each change, so a crash
    never leaves a torn file and a full disk raises a one-line ``OutputError``; a column that first appears in a
    later epoch extends the header (earlier rows get an empty cell). The trainer keeps the rows in
    ``weights/last.pt`` as well and calls ``replace(rows)`` on resume, so rows of finished epochs survive a
    kill between the checkpoint and the CSV. ``truncate(epoch)`` keeps only rows with ``epoch <= epoch``.
    """

    def __init__(self, path: str | os.PathLike, rows: list[Mapping[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if rows is not None:
            self.rows = [dict(r) for r in rows]
        elif self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]

    def truncate(self, epoch: int) -> None:
        self.rows = [r for r in self.rows if int(float(r["epoch"])) <= epoch]
        self._write()

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write()

    def replace(self, rows: list[Mapping[str, Any]]) -> None:
        """Rewrite the file with exactly ``rows``."""
        self.rows = [dict(r) for r in rows]
        self._write()

    def _write(self) -> None:
        header: list[str] = []
        for r in self.rows:
            header += [k for k in r if k not in header]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header, restval="")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        with atomic_write(self.path, "w", what="results CSV", newline="") as f:
            f.write(buf.getvalue())


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"det": {"mAP50": .5, "per_class_AP50_95": {...}}}`` → ``{"det/mAP50": .5}`` (scalars only;
    per-class tables are left out of the CSV/TensorBoard)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if str(k).startswith("per_class"):
            continue
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def metric_columns(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``results.csv`` / TensorBoard columns of an evaluation's metrics (``flatten_metrics`` without the
    ``data`` entry)."""
    return flatten_metrics({k: v for k, v in metrics.items() if k != "data"})


class TensorBoard:
    """Thin ``SummaryWriter`` wrapper; a no-op when disabled (non-zero ranks, ``tensorboard=false``)."""

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}{k}", float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def postfix(terms: Mapping[str, float], imgs_per_s: float, keys: tuple[str, ...]) -> str:
    """Short tqdm postfix: the main loss terms, then images/s."""
    parts = [f"{k}={terms[k]:.3g}" for k in keys if k in terms]
    return " ".join([*parts, f"{imgs_per_s:.1f} img/s"])
