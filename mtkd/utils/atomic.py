"""The one atomic writer: every file mtkd writes for a user goes through ``atomic_write``.

A write goes to a temp file in the destination folder (``.<name>.<random>.tmp``), is flushed and fsynced, gets the
usual permissions (``0o666 & ~umask``; ``mkstemp`` creates 0600) and replaces the destination with ``os.replace``.
A crash, a full disk or Ctrl-C during the write leaves the previous file at the destination untouched and removes
the temp file. A kill -9 can leave a temp file behind: ``remove_stale_temps`` deletes them on the next start.

Errors of the file system (no permission, disk full, destination is a folder) become one-line ``OutputError``s
that name the destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mtkd.errors import OutputError

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(e: OSError) -> str:
    """A short reason for an ``OSError``: ``"no space left on device"``, ``"permission denied"``, ..."""
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EFBIG:
        return "file too large (file size limit reached)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return (e.strerror or type(e).__name__).lower()


def ensure_parent(path: str | os.PathLike, what: str = "output") -> Path:
    """Create ``path``'s parent folder; ``OutputError`` naming it when that is impossible or ``path`` is a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: {what} path is an existing directory; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"{path.parent}: cannot create the {what} folder ({describe_os_error(e)})"
        ) from None
    return path


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, what: str = "output", **open_kw: Any
) -> Iterator[IO]:
    """``with atomic_write(path, "w") as f: f.write(...)``: ``path`` is replaced only when the block succeeds.

    Args:
        path: destination file; its folder is created.
        mode: ``"wb"`` or ``"w"`` (text; ``encoding`` defaults to UTF-8, ``newline`` may be given).
        what: a word for error messages (``"checkpoint"``, ``"metrics JSON"``).

    Raises ``OutputError`` (one line, naming ``path``) for file-system errors; other exceptions from the block
    propagate unchanged. The destination is untouched in every failure case.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = ensure_parent(path, what)
    if mode == "w":
        open_kw.setdefault("encoding", "utf-8")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write the {what} ({describe_os_error(e)})") from None
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OutputError:  # already one line naming its own path (e.g. a nested atomic write)
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write the {what} ({describe_os_error(e)}); the previous file, if any, "
            f"is unchanged"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, *, what: str = "output") -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``; returns ``Path(path)``."""
    with atomic_write(path, "w", what=what) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "output") -> Path:
    """Atomically write ``data`` to ``path``; returns ``Path(path)``."""
    with atomic_write(path, "wb", what=what) as f:
        f.write(data)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temp files ``atomic_write`` left in ``folder`` after a kill -9 (all, or only those for ``name``).

    Call it only where no other process writes into ``folder`` (e.g. a locked run folder). Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{name}.*{_TMP_SUFFIX}" if name else f".*{_TMP_SUFFIX}"
    removed = []
    for p in folder.glob(pattern):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
