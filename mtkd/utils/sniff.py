"""Tell what a model file holds WITHOUT unpickling it.

Unpickling runs code: a pickle can name any importable callable (``builtins.open``, ``os.system``) and have it
called while loading. ``scan_file`` only reads the pickle opcodes (``pickletools.genops`` decodes them without
executing anything) and lists the ``module.name`` globals the file would import:

- a ``torch.save`` zip archive: the globals of its ``<archive>/data.pkl``;
- a legacy (pre-1.6, non-zip) ``torch.save`` file or a plain ``pickle.dump`` file: the globals of the
  pickles at the start of the file (legacy files are a few pickles followed by raw storage bytes).

``unsafe_globals`` keeps the ones ``torch.load(weights_only=True)`` would refuse, so a refusal can name them
(e.g. ``ultralytics.nn.tasks.DetectionModel``).
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

#: globals that come with every torch checkpoint and say nothing about what is inside
_BORING_PREFIXES = ("torch._utils.", "torch.serialization.", "collections.OrderedDict", "torch.storage.")


@dataclass
class FileScan:
    """Result of ``scan_file``.

    Attributes:
        container: ``"zip"`` (``torch.save`` archive), ``"torchscript"`` (``torch.jit.save`` archive),
            ``"pickle"`` (legacy torch file or plain pickle), or ``"unknown"`` (neither: not a model file).
        globals: ``module.name`` of every global the pickle imports, in order of first appearance.
        error: why the scan stopped early, if it did (a truncated or corrupt file).
    """

    container: str
    globals: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def unsafe_globals(self) -> list[str]:
        """Globals outside torch's ``weights_only`` allowlist (classes/functions a load would import)."""
        allowed = _weights_only_allowlist()
        return [g for g in self.globals if g not in allowed]

    def example_class(self) -> str | None:
        """The most telling unsafe global for a message: a non-torch one first, else the first unsafe one."""
        unsafe = [g for g in self.unsafe_globals if not g.startswith(_BORING_PREFIXES)]
        rank = [g for g in unsafe if not g.startswith(("torch.", "builtins."))]
        rank += [g for g in unsafe if g.startswith("torch.")]
        return (rank or unsafe or [None])[0]


def _weights_only_allowlist() -> set[str]:
    """``module.name`` strings ``torch.load(weights_only=True)`` accepts (torch's default + user-added)."""
    import torch

    allowed: set[str] = set()
    try:  # private in torch 2.x; the public get_unsafe_globals_in_checkpoint only handles protocol-2 zips
        from torch import _weights_only_unpickler as wou

        allowed |= set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        allowed |= {
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_parameter",
        }
    for g in torch.serialization.get_safe_globals():
        obj = g[0] if isinstance(g, tuple) else g
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return allowed


def _normalize(name: str) -> str:
    """Protocol-2 pickles spell ``builtins`` as Python 2's ``__builtin__``."""
    return "builtins." + name[len("__builtin__.") :] if name.startswith("__builtin__.") else name


def pickle_globals(data: bytes | io.BufferedIOBase, max_pickles: int = 1) -> tuple[list[str], str | None]:
    """Globals named by the pickle(s) in ``data`` (``GLOBAL``, ``INST`` and protocol-4 ``STACK_GLOBAL``).

    ``STACK_GLOBAL`` takes module and name from the stack; they are the last two strings pushed (directly or
    through the memo), which is how every pickler writes them. Returns ``(globals, error_or_None)``.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    found: dict[str, None] = {}
    for index in range(max_pickles):
        memo: dict[int, object] = {}
        strings: list[object] = []  # the last two values pushed (strings or None), to resolve STACK_GLOBAL
        last: object = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    found[_normalize(str(arg).replace(" ", ".", 1))] = None
                    last = None
                elif name == "STACK_GLOBAL":
                    if len(strings) == 2 and all(isinstance(s, str) for s in strings):
                        found[_normalize(f"{strings[0]}.{strings[1]}")] = None
                    else:
                        found["<unresolved STACK_GLOBAL>"] = None
                    last = None
                elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = last
                    continue
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                    continue
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    last = memo.get(int(arg))
                elif "UNICODE" in name or "STRING" in name:
                    last = arg if isinstance(arg, str) else None
                else:
                    last = None
                strings = (strings + [last])[-2:]
        except Exception as e:  # genops raises ValueError on bytes that are not pickle opcodes
            if index == 0:
                return list(found), f"not a valid pickle ({e})"
            break  # legacy torch files: raw storage bytes follow the pickles
        if not stream.read(1):
            break
        stream.seek(-1, io.SEEK_CUR)
    return list(found), None


def scan_file(path: str | Path) -> FileScan:
    """Inspect ``path`` without unpickling it (see the module docstring)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
                return FileScan("torchscript")
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
            if not pkl:
                return FileScan("unknown", error="zip archive without data.pkl (not written by torch.save)")
            found, err = pickle_globals(zf.read(pkl[0]))
            return FileScan("zip", found, err)
    with open(path, "rb") as f:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0x80:  # PROTO opcode opens every protocol >= 2 pickle
            return FileScan("unknown", error="neither a torch.save archive nor a pickle")
        f.seek(0)
        # legacy torch.save: magic number, protocol, sys info, the object, storage keys (5 pickles)
        found, err = pickle_globals(f, max_pickles=5)
    return FileScan("pickle", found, err)
