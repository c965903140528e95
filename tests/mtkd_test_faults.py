"""Fault injection shared by the output tests: a full disk for this process, and a skip where permissions are moot.

Importable from any test module (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal

import pytest

needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")


@contextlib.contextmanager
def file_size_limit(nbytes):
    """A full disk, for this process: writes beyond ``nbytes`` in any file fail with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
