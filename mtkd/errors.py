"""User-facing errors: the CLI prints ``str(err)`` on one line and exits non-zero, without a traceback."""

from __future__ import annotations


class MtkdError(Exception):
    """Base class of errors caused by user input (files, configs, arguments)."""


class ConfigError(MtkdError, ValueError):
    """A config key or value is wrong. The message names the key and what was expected."""


class DatasetError(MtkdError, ValueError):
    """A dataset file is wrong. The message names the file (and line) and what was expected."""


class CheckpointError(MtkdError, ValueError):
    """A checkpoint cannot be loaded safely or is not an mtkd checkpoint. The message names the file."""


class CompatibilityError(MtkdError, ValueError):
    """A teacher/student pair cannot be distilled. The message names the mismatch."""


class OutputError(MtkdError, OSError):
    """An output file or folder cannot be written (permission, disk full, a folder where a file was expected).

    The message names the path; nothing the user had at that path is lost."""
