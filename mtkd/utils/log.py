"""Logging for library code: ``get_logger(__name__)``, messages from DDP ranks other than 0 dropped.

Library modules log through loggers under ``mtkd`` and never configure handlers (that is the application's
choice: library users see warnings through Python's last-resort handler and configure the rest as they like).
Commands (``mtkd <command>``, ``tools/*.py``) call ``setup_cli_logging()``, which prints ``mtkd`` INFO messages to
the current ``sys.stdout`` as plain lines, on rank 0 only. Commands may still ``print`` their own tables.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "mtkd"


def process_rank() -> int:
    """This process's DDP rank: ``torch.distributed`` when initialised, else ``$RANK`` (torchrun), else 0."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)


class Rank0Filter(logging.Filter):
    """Keep a record only on rank 0 (every rank runs the same code; one copy of each message is enough)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return process_rank() == 0


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (so redirection and test capture work)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``mtkd.engine.trainer`` → child of the ``mtkd`` logger)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def setup_cli_logging(level: int = logging.INFO) -> None:
    """Print ``mtkd`` messages of ``level`` and above as plain lines on rank 0 (idempotent)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(Rank0Filter())
        logger.addHandler(handler)
    logger.propagate = False
