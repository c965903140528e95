"""Supplying the classes a trusted pickle needs but cannot import: ``mtkd convert --import SCRIPT.py``.

A model pickled by a script (``torch.save(model)``) stores its classes by module and name; classes defined in the
script itself are stored as ``__main__.<Name>`` (Torch-Pruning's ``C2f_v2`` recipe does this), so loading the
pickle anywhere else fails with ``Can't get attribute 'C2f_v2' on <module '__main__'>`` (Torch-Pruning issues
#147, #363, #365, #399). ``--import SCRIPT.py`` runs that file as a module (not as ``__main__``, so code under
``if __name__ == "__main__":`` does not run) and resolves the pickle's ``__main__.<Name>`` and
``<script stem>.<Name>`` references to the names it defines. Running the file is running its code: it is only
done together with ``--trust-pickle``, for files the user wrote or trusts.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtkd.errors import ConfigError


def import_user_files(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Run each ``.py`` file as a module; ``{module name a pickle may use: {name: object}}``, where the names are
    the file's public top-level names, under ``"__main__"`` and the file's stem."""
    found: dict[str, dict[str, Any]] = {}
    for raw in paths:
        path = Path(raw)
        if path.suffix != ".py" or not path.is_file():
            raise ConfigError(
                f"--import: {path}: expected an existing Python file (.py) defining the classes"
            )
        name = f"mtkd_import_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--import: {path}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up by their module
        sys.path.insert(0, str(path.parent.resolve()))  # the script's own sibling imports
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ConfigError(f"--import: {path}: running it failed ({type(e).__name__}: {e})") from None
        finally:
            sys.path.pop(0)
        names = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        for key in ("__main__", path.stem):
            found.setdefault(key, {}).update(names)
    return found


def pickle_module(extra: Mapping[str, Mapping[str, Any]]) -> types.ModuleType:
    """A ``pickle``-like module for ``torch.load(pickle_module=...)`` whose unpickler resolves
    ``module.name`` from ``extra`` first (``import_user_files``), then as usual."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if name in extra.get(module, {}):
                return extra[module][name]
            return super().find_class(module, name)

    mod = types.ModuleType("mtkd_pickle")
    for attr in ("Pickler", "UnpicklingError", "HIGHEST_PROTOCOL", "dump", "dumps", "loads"):
        setattr(mod, attr, getattr(pickle, attr))
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod
