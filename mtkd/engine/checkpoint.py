"""Moved to ``mtkd.checkpoint`` (kept while importers move; removed by the end of the redesign)."""

from mtkd.checkpoint import FORMAT, load_checkpoint, save_checkpoint  # noqa: F401
