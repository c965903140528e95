"""Opt-in for code that a checkpoint *names*: the import paths a ``generic`` arch asks mtkd to import and call.

``torch.load(weights_only=True)`` only proves that unpickling runs no code. Rebuilding the model from the file's
architecture description must not run code either, unless the user opted in for that file: a ``generic`` arch
names ``target: package.module:Class``, and rebuilding it imports that module and calls that attribute with the
file's ``kwargs`` — which is exactly as dangerous as unpickling (``target: os:system`` runs a shell command).

``trust_code`` (``tools/*.py --trust-code PATH`` (repeatable, ``'*'`` = any), ``trust_code=`` in training configs)
is:
  - ``False`` (default): no import path named by a file is imported; rebuilding such a file raises
    ``CheckpointError`` naming the path and the flag that allows it;
  - a list of import paths (``["yolop.models:YOLOP"]``): only those exact paths may be imported;
  - ``True``: any path the file names (only for files you trust as much as your own code).

Model configs the user writes (``model: {adapter: generic, target: ...}`` in a training YAML) are the user's own
code choice and need no opt-in; the opt-in is for paths read from checkpoint files, and for a teacher given as a
config dict (``teacher: {adapter: composite, ...}``, ``mtkd.engine.task.load_teacher``), which stands in for a
teacher checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from mtkd.errors import CheckpointError

TrustCode = bool | Sequence[str]


def normalize_trust(trust_code: TrustCode | None) -> bool | tuple[str, ...]:
    """``True``/``False``, or the tuple of allowed import paths (a single string is one path)."""
    if trust_code is None or trust_code is False:
        return False
    if trust_code is True or (not isinstance(trust_code, str) and "*" in trust_code):
        return True
    if isinstance(trust_code, str):
        return (trust_code,)
    return tuple(str(t) for t in trust_code)


def require_trusted(target: str, trust_code: TrustCode | None, where: str) -> None:
    """Return if ``target`` may be imported under ``trust_code``; ``CheckpointError`` naming it otherwise.

    Args:
        target: the import path the file names (``"package.module:Class"``).
        trust_code: the user's opt-in (module docstring).
        where: the file (or arch field) the path comes from, for the message.
    """
    trust = normalize_trust(trust_code)
    if trust is True or (trust and target in trust):
        return
    allowed = f" (allowed: {', '.join(trust)})" if trust else ""
    raise CheckpointError(
        f"{where}: rebuilding its model would import and call {target!r} (generic adapter field 'target'), i.e. run "
        f"code named by the file{allowed}; only if you trust this file, pass --trust-code {target} "
        f"(training config: trust_code=[{target}])"
    )


def arch_targets(arch: Any) -> list[str]:
    """Every import path a (possibly nested, e.g. composite) arch names through a ``generic`` member."""
    if isinstance(arch, Mapping):
        own = (
            [arch["target"]]
            if arch.get("adapter") == "generic" and isinstance(arch.get("target"), str)
            else []
        )
        return own + [t for v in arch.values() for t in arch_targets(v)]
    if isinstance(arch, (list, tuple)):
        return [t for v in arch for t in arch_targets(v)]
    return []


def add_trust_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-code IMPORT_PATH`` (repeatable; ``'*'`` = any path): read back with ``trust_from_args``."""
    parser.add_argument(
        "--trust-code", action="append", default=None, metavar="IMPORT_PATH",
        help="allow rebuilding a generic-adapter model whose checkpoint names this import path "
             "(package.module:Class; repeatable; '*' = any path: only for files you trust). Default: none",
    )  # fmt: skip


def trust_from_args(values: Sequence[str] | None) -> bool | tuple[str, ...]:
    """The ``trust_code`` value of ``--trust-code`` arguments (``None`` → ``False``; ``'*'`` → ``True``)."""
    if not values:
        return False
    return True if "*" in values else tuple(values)
