"""Turn pickled, pruned or Ultralytics model files into safe mtkd checkpoints (DESIGN.md §4).

Inputs ``convert_file`` understands:

- a safe mtkd checkpoint: rebuilt once to check it, then copied;
- a plain ``state_dict`` (loadable with ``weights_only=True``): needs ``base=`` (a safe checkpoint of the same
  architecture) because a state dict carries no architecture;
- a whole pickled model (``torch.save(model)``) of a built-in or Ultralytics-based adapter, pruned or not
  (Ultralytics-based: pruned widths and split-free blocks, Torch-Pruning's ``C2f_v2`` included, are described
  by the adapter's arch; see ``mtkd.models.adapters.ultralytics``);
- an Ultralytics ``.pt`` checkpoint (a dict whose ``"ema"``/``"model"`` hold a pickled ``DetectionModel``, often
  float16): the EMA weights when present, in float32, wrapped with the Ultralytics adapter;
- a Torch-Pruning ``tp.state_dict(model)`` file (experimental in Torch-Pruning 1.6): a dict
  ``{"full_state_dict": {module_name: module.__dict__}, "attributions": {...}}``. The module dicts hold the
  pruned child modules themselves, so it is a pickle too; it is applied like ``tp.load_state_dict`` onto
  ``base=`` (a safe checkpoint of the unpruned model) or ``arch=`` (a built-in model name), which supply the
  adapter class, and ``arch()`` then reads the pruned widths from the live modules.

The last three contain pickled Python objects: unpickling them runs whatever code the file names, so they are
loaded (``weights_only=False``) only when ``trust_pickle=True``. Classes the pickle names but this process cannot
import (defined in the saving script's ``__main__``, e.g. Torch-Pruning's ``C2f_v2``) come from
``imports=[SCRIPT.py]`` (``--import``; ``mtkd.prune.user_classes``). Before that, the file is inspected without
unpickling (``mtkd.utils.sniff``) and refused with the name of a class it would import. Every other load is
``torch.load(..., weights_only=True)``.

The written checkpoint is always loaded back with ``mtkd.models.load_model`` (``weights_only=True``) to prove it
rebuilds; ``verify=True`` also runs the source model and the rebuilt one on the same seeded random images and
fails (removing the output) when an output differs by more than ``tol``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtkd.errors import CheckpointError, ConfigError
from mtkd.models.adapters.base import MultiTaskAdapter
from mtkd.models.flat import format_diffs, max_abs_diffs, named_outputs
from mtkd.models.trust import TrustCode, add_trust_code_argument, arch_targets, trust_from_args
from mtkd.utils.atomic import atomic_write
from mtkd.utils.sniff import scan_file

DEFAULT_TOL = 1e-5


class VerificationError(CheckpointError):
    """The converted model's outputs differ from the original's beyond the tolerance (CLI exit code 1)."""


# -- verification ------------------------------------------------------------------------------------------------
def compare_models(
    a: nn.Module, b: nn.Module, *, imgsz: int = 128, batch: int = 2, seed: int = 0
) -> dict[str, float]:
    """Max abs difference of every flat output (``seg``, each raw det tensor) of two adapters, eval mode,
    on the same seeded random images ``[batch, 3, imgsz, imgsz]`` in [0, 1]."""
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    modes = (a.training, b.training)
    a.eval(), b.eval()
    try:
        with torch.no_grad():
            return max_abs_diffs(named_outputs(a, x), named_outputs(b, x))
    finally:
        a.train(modes[0]), b.train(modes[1])


# -- writing -----------------------------------------------------------------------------------------------------
def convert_module(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    verify: bool = True,
    tol: float = DEFAULT_TOL,
    imgsz: int = 128,
    config: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Write ``model`` (a ``MultiTaskAdapter`` held in Python, e.g. just pruned) as a safe checkpoint.

    Use this from the script that defined the model's classes when a pickle cannot be loaded elsewhere
    (``Can't get attribute 'C2f_v2' on <module '__main__'>``). The model is cast to float32 in place.

    Returns ``{"out": Path, "params": int, "max_abs_diff": {output: float} or None}``. Raises
    ``VerificationError`` when the rebuilt model's outputs differ by more than ``tol`` (the file is removed).
    """
    from mtkd.checkpoint import save_model
    from mtkd.models import load_model

    model = getattr(model, "module", model)
    if not isinstance(model, MultiTaskAdapter):
        raise CheckpointError(
            f"{source or 'model'}: a {type(model).__module__}.{type(model).__name__} is not a MultiTaskAdapter; "
            f"wrap it in an adapter (mtkd.models.adapters) first"
        )
    model.float().eval()
    out = Path(out)
    metrics = {
        "convert": {"source": source or "python", "type": f"{type(model).__module__}.{type(model).__name__}"}
    }
    save_model(out, model, config=config, metrics=metrics)
    # weights_only=True: the proof that the file is safe and complete; it may import only the generic targets the
    # caller's live model was built from (already imported in this process)
    rebuilt = load_model(out, trust_code=arch_targets(model.arch()))
    diffs = None
    if verify:
        diffs = compare_models(model, rebuilt, imgsz=imgsz)
        bad = {k: v for k, v in diffs.items() if not v <= tol}
        if bad:
            out.unlink(missing_ok=True)
            raise VerificationError(
                f"{source or 'model'}: converted model differs from the original beyond tol={tol:g}: "
                f"{format_diffs(diffs)}; nothing written"
            )
    return {"out": out, "params": sum(p.numel() for p in rebuilt.parameters()), "max_abs_diff": diffs}


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, atomic_write(dst, "wb", what="checkpoint") as g:
        shutil.copyfileobj(f, g)


# -- reading -----------------------------------------------------------------------------------------------------
def refusal_message(path: str | os.PathLike, example: str | None) -> str:
    """The one-line refusal for files that need unpickling."""
    eg = f" (e.g. {example})" if example else ""
    return (
        f"{path}: contains pickled Python objects{eg}; loading it would run arbitrary code. "
        f"Re-run with --trust-pickle only if you trust its source."
    )


def _trusted_load(path: Path, imports: Sequence[str | os.PathLike] = ()) -> Any:
    """``torch.load(weights_only=False)``: only called after the user passed ``trust_pickle``; classes defined
    by the ``imports`` files resolve the pickle's ``__main__.<Name>`` references."""
    from mtkd.prune.user_classes import import_user_files, pickle_module

    extra = {"pickle_module": pickle_module(import_user_files(imports))} if imports else {}
    try:
        return torch.load(path, map_location="cpu", weights_only=False, **extra)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        msg = str(e)
        m = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", msg)
        what = f"class {m.group(1)!r} of module {m.group(2)!r}" if m else msg
        if isinstance(e, ModuleNotFoundError) and getattr(e, "name", None):
            what = f"module {e.name!r}"
        raise CheckpointError(
            f"{path}: the pickle needs {what}, which cannot be imported here (classes defined in the saving "
            f"script's __main__ are not importable). Pass --import SCRIPT.py, a Python file that defines it (its "
            f"top-level code runs; keep the rest under if __name__ == '__main__':)"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _load_base(
    path: Path, base: str | os.PathLike | None, what: str, trust_code: TrustCode
) -> MultiTaskAdapter:
    if base is None:
        raise ConfigError(
            f"{path}: {what} carries no architecture; pass --base SAFE_CKPT (an mtkd checkpoint of the "
            f"same, unpruned model)"
        )
    from mtkd.models import load_model

    return load_model(base, trust_code=trust_code)


def _from_state_dict(
    path: Path, state: Mapping[str, Tensor], base: str | os.PathLike | None, trust_code: TrustCode = False
) -> MultiTaskAdapter:
    from mtkd.models.build import load_state_strict

    model = _load_base(path, base, "a plain state_dict", trust_code)
    load_state_strict(model, state, f"{path} (on the architecture of {base})")
    return model


def _from_tp_state_dict(
    path: Path,
    obj: Mapping[str, Any],
    base: str | os.PathLike | None,
    arch: str | None,
    trust_code: TrustCode = False,
) -> MultiTaskAdapter:
    """``tp.load_state_dict`` onto the base model, skipping read-only attributes (properties such as
    ``MultiTaskAdapter.nc_det``, which ``tp.state_dict`` records and ``tp.load_state_dict`` fails to set).

    The file holds every module's ``__dict__`` (children, widths, class names included), so the base only
    supplies the adapter class: ``arch`` = a built-in model name (``yolo_mt_n``) is enough, its class
    counts and head kind are replaced by the file's."""
    if arch is not None and base is None:
        from mtkd.models import build_model

        model = build_model(arch, nc_det=1, nc_seg=1)
    else:
        model = _load_base(
            path,
            base,
            "a Torch-Pruning tp.state_dict file (pass --base SAFE_CKPT or --arch NAME)",
            trust_code,
        )
    full, attrs = obj["full_state_dict"], obj.get("attributions") or {}
    for name, module in model.named_modules():  # lazy: after the root update it walks the pruned children
        if name in full:
            module.__dict__.update(full[name])
    for name, module in model.named_modules():
        for attr, value in (attrs.get(name) or {}).items():
            if isinstance(getattr(type(module), attr, None), property):
                continue
            setattr(module, attr, value)
    return model


def _wrap_ultralytics(path: Path, module: nn.Module) -> MultiTaskAdapter:
    """An unpickled Ultralytics ``DetectionModel``/``SemanticSegmentationModel`` -> ``UltralyticsAdapter``
    (float32, trainable except the fixed DFL kernel; class names from ``module.names``)."""
    from mtkd.models.adapters.ultralytics import UltralyticsAdapter

    module = module.float()
    module.requires_grad_(True)  # Ultralytics strips requires_grad from saved checkpoints
    head = module.model[-1] if isinstance(getattr(module, "model", None), nn.Sequential) else None
    if head is None or not hasattr(head, "nc"):
        raise CheckpointError(
            f"{path}: {type(module).__name__} is not an Ultralytics detection/semantic model"
        )
    if hasattr(head, "dfl") and hasattr(head.dfl, "conv"):
        head.dfl.requires_grad_(False)
    raw = getattr(module, "names", None)
    names = (
        [str(raw[i]) for i in range(int(head.nc))]
        if isinstance(raw, Mapping) and len(raw) == head.nc
        else [f"class{i}" for i in range(int(head.nc))]
    )
    semantic = type(head).__name__ == "SemanticSegment"
    try:
        return UltralyticsAdapter(
            module, det_names=() if semantic else names, seg_names=names if semantic else ()
        )
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def find_model(
    obj: Any,
    path: Path,
    *,
    base: str | os.PathLike | None = None,
    arch: str | None = None,
    trust_code: TrustCode = False,
) -> MultiTaskAdapter:
    """The adapter inside an unpickled object (see the module docstring for the layouts recognised).
    ``trust_code`` applies to the ``base`` checkpoint (``mtkd.models.trust``)."""
    if isinstance(obj, nn.Module):
        obj = getattr(obj, "module", obj)  # DDP / DataParallel
        if isinstance(obj, MultiTaskAdapter):
            return obj
        if type(obj).__module__.startswith("ultralytics."):
            return _wrap_ultralytics(path, obj)
        raise CheckpointError(
            f"{path}: holds a {type(obj).__module__}.{type(obj).__name__}, which is neither an mtkd adapter nor an "
            f"Ultralytics model; wrap it in an adapter (e.g. the 'generic' one) and call "
            f"mtkd.prune.convert.convert_module(adapter, out) from Python"
        )
    if isinstance(obj, Mapping):
        if "full_state_dict" in obj and "attributions" in obj:
            return _from_tp_state_dict(path, obj, base, arch, trust_code)
        for key in ("ema", "model", "student", "state_dict", "model_state_dict"):
            value = obj.get(key)
            if isinstance(value, nn.Module) or (key != "ema" and _is_state_dict(value)):
                return find_model(value, path, base=base, arch=arch, trust_code=trust_code)
        if _is_state_dict(obj):
            return _from_state_dict(path, obj, base, trust_code)
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no model found in a dict with keys [{keys}]")
    raise CheckpointError(f"{path}: no model found (top-level object is a {type(obj).__name__})")


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    trust_code: TrustCode = False,
    verify: bool = False,
    tol: float = DEFAULT_TOL,
    base: str | os.PathLike | None = None,
    arch: str | None = None,
    imgsz: int = 128,
    imports: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Convert ``src`` to a safe checkpoint at ``out`` (see the module docstring).

    Plain state dicts need ``base`` (a safe checkpoint of the same architecture); Torch-Pruning
    ``tp.state_dict`` files need ``base`` or ``arch`` (the built-in model name they were pruned from).

    Returns ``{"out", "kind", "params", "max_abs_diff"}``; ``kind`` is ``"mtkd"``, ``"state_dict"`` or
    ``"pickle"``. ``imports``: Python files defining classes the pickle needs (only with ``trust_pickle``).
    Raises ``CheckpointError`` (refusal, unreadable file, no model, verification failure).
    """
    path, out = Path(src), Path(out)
    if imports and not trust_pickle:
        raise ConfigError(
            "--import: runs the given files to unpickle with their classes; it needs --trust-pickle"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    scan = scan_file(path)
    if scan.container == "torchscript":
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save) cannot be converted; "
            f"convert the eager model with mtkd.prune.convert.convert_module"
        )
    if scan.container == "unknown" or scan.error:
        raise CheckpointError(f"{path}: not a PyTorch model file ({scan.error})")

    if not scan.unsafe_globals:  # weights-only loadable: safe to load, no code runs
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{path}: cannot be loaded with weights_only=True: {str(e).splitlines()[0]}"
            ) from None
        if isinstance(obj, Mapping) and obj.get("format") == "mtkd-checkpoint":
            from mtkd.models import load_model

            model = load_model(path, trust_code=trust_code)
            if out.resolve() != path.resolve():
                _copy_atomic(path, out)
            return {
                "out": out,
                "kind": "mtkd",
                "params": sum(p.numel() for p in model.parameters()),
                "max_abs_diff": None,
            }
        model = find_model(obj, path, base=base, arch=arch, trust_code=trust_code)
        res = convert_module(model, out, verify=verify, tol=tol, imgsz=imgsz, source=str(path))
        return {**res, "kind": "state_dict"}

    if not trust_pickle:
        raise CheckpointError(refusal_message(path, scan.example_class()))
    obj = _trusted_load(path, imports)
    model = find_model(obj, path, base=base, arch=arch, trust_code=trust_code)
    res = convert_module(model, out, verify=verify, tol=tol, imgsz=imgsz, source=str(path))
    return {**res, "kind": "pickle"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mtkd convert",
        description="Convert a pickled / pruned / Ultralytics / Torch-Pruning model file to a safe mtkd checkpoint.",
    )
    p.add_argument("input", help="model file to convert")
    p.add_argument("--out", required=True, help="safe checkpoint to write")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling INPUT (runs code named in the file: only for files you trust)",
    )
    p.add_argument(
        "--verify", action="store_true", help="compare outputs of the original and converted model"
    )
    p.add_argument(
        "--tol", type=float, default=DEFAULT_TOL, help=f"max abs difference for --verify ({DEFAULT_TOL:g})"
    )
    p.add_argument(
        "--base",
        default=None,
        help="safe checkpoint of the same (unpruned) architecture, for state_dict / tp.state_dict inputs",
    )
    p.add_argument(
        "--arch",
        default=None,
        help="built-in model name (e.g. yolo_mt_n) the tp.state_dict file was pruned from (or --base)",
    )
    p.add_argument("--imgsz", type=int, default=128, help="image size for --verify (default 128)")
    p.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="SCRIPT.py",
        help="with --trust-pickle: a Python file defining classes the pickle needs but cannot import (e.g. "
        "Torch-Pruning's C2f_v2, defined in the pruning script's __main__); its top-level code runs. Repeatable",
    )  # fmt: skip
    add_trust_code_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``mtkd convert INPUT --out OUT [--trust-pickle] [--verify]``."""
    args = _parser().parse_args(argv)
    if args.imgsz < 32 or args.imgsz % 32:
        raise ConfigError(f"--imgsz: expected a positive multiple of 32, got {args.imgsz}")
    try:
        res = convert_file(
            args.input,
            args.out,
            trust_pickle=args.trust_pickle,
            trust_code=trust_from_args(args.trust_code),
            verify=args.verify,
            tol=args.tol,
            base=args.base,
            arch=args.arch,
            imgsz=args.imgsz,
            imports=args.imports,
        )
    except VerificationError as e:
        print(f"mtkd convert: verify FAILED: {e}")
        return 1
    if res["kind"] == "mtkd":
        print(f"{args.input} is already a safe mtkd checkpoint; copied to {res['out']}")
    else:
        print(
            f"converted {args.input} -> {res['out']} ({res['params'] / 1e6:.3f}M params); "
            f"reloads with weights_only=True"
        )
    if res["max_abs_diff"] is not None:
        print(f"verify OK (tol {args.tol:g}): max abs diff {format_diffs(res['max_abs_diff'])}")
    return 0
