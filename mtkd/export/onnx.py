"""ONNX export of a multi-task model, with an onnxruntime parity and latency check.

The exported graph takes ``images: float32 [batch, 3, S, S]`` (RGB in [0, 1], the same input the PyTorch model
takes) and returns the raw outputs of ``mtkd.models.flat.FlatOutputs``: ``seg`` logits ``[batch, C_seg, S, S]`` (several seg tasks: ``seg_<task>`` each)
then the raw detection head (``det_0..det_{nl-1}`` ``[batch, na, H_l, W_l, 5 + nc]`` for ``anchor`` heads,
``det_boxes [batch, 4*reg_max, A]`` and ``det_scores [batch, nc, A]`` for ``anchor_free`` heads). Box decoding
and NMS are left to the deployment side; ``<out>.json`` (written next to the ONNX file) carries what decoding
needs: class names, image size, output names and shapes, head kind, strides, anchors, ``reg_max``.

Exporter: torch 2.14's default ``torch.onnx.export(dynamo=True)`` needs ``onnxscript``, which is not a
dependency of mtkd, so the TorchScript-based exporter (``dynamo=False``) is used; it supports ``dynamic_axes``
(the batch axis is dynamic by default). Opsets ``MIN_OPSET``..``MAX_OPSET`` (11..20) are accepted: torch's
TorchScript exporter stops at 20; below 9 it cannot export the resize of the segmentation head, and at 9-10
it exports ``Upsample``, which torch warns may not match PyTorch's interpolation (``Resize`` from opset 11
does). Only the model is exported: connectors and teachers are not part of a safe checkpoint.

Writes are atomic and keep the ONNX file and its model card consistent: the graph is exported into memory
first, then the card is written to a temp file, the ONNX file replaces the old one (``mtkd.utils.atomic``)
and the card replaces the old card last. A failed export or write leaves the previous ``<out>`` and
``<out>.json`` both untouched (``OutputError`` for a file-system error). In the one case where the new ONNX
file is in place but its card cannot be put beside it, the stale card is deleted (never left describing
another graph) and the ``OutputError`` says so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtkd.errors import ConfigError, OutputError
from mtkd.models.flat import FlatOutputs, format_diffs
from mtkd.utils.atomic import atomic_write, describe_os_error, ensure_parent, write_bytes

DEFAULT_IMGSZ = 640
DEFAULT_OPSET = 17
MIN_OPSET = (
    11  # 7-8: the seg head's resize cannot be exported; 9-10: Upsample may not match PyTorch (torch warns)
)
MAX_OPSET = 20  # torch 2.14: torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def _check_imgsz(imgsz: int) -> None:
    if imgsz < 32 or imgsz % 32:
        raise ConfigError(f"imgsz: expected a positive multiple of 32, got {imgsz}")


def _check_opset(opset: int, name: str = "opset") -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"{name}: expected an ONNX opset from {MIN_OPSET} to {MAX_OPSET} (the range mtkd models "
            f"export with torch's TorchScript exporter), got {opset}"
        )


def card_path(out: str | Path) -> Path:
    """The model card written beside ``out``: ``<out>.json``."""
    return Path(f"{out}.json")


def _check_out(out: Path) -> None:
    """``OutputError`` before any work when ``out`` or its card path is a directory or its folder is unusable."""
    folder = ensure_parent(out, "ONNX model").parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot write the ONNX model there (permission denied)")
    if card_path(out).is_dir():
        raise OutputError(f"{card_path(out)}: model card path is an existing directory; expected a file path")


class _OnnxWriteFailed(Exception):
    """Carries the ``OutputError`` of the ONNX write out of the card's ``atomic_write`` block (which then just
    discards the card's temp file)."""


def _write_onnx_and_card(out: Path, onnx_bytes: bytes, card: dict[str, Any]) -> None:
    """Put ``onnx_bytes`` at ``out`` and ``card`` at ``<out>.json`` so that they stay a consistent pair.

    The card is written to a temp file first; the ONNX file replaces the old one while that temp file is open
    (a failure up to here keeps both old files); the card replaces the old card last. Should that last step
    fail, the stale card is removed (``OutputError`` says so): a card never describes another export.
    """
    card_file = card_path(out)
    onnx_written = False
    try:
        with atomic_write(card_file, "w", what="ONNX model card") as f:
            f.write(json.dumps(card, indent=2))
            f.flush()
            try:
                write_bytes(out, onnx_bytes, what="ONNX model")
            except OutputError as e:  # an OSError: the card's writer would report it as its own
                raise _OnnxWriteFailed(e) from None
            onnx_written = True
    except _OnnxWriteFailed as e:
        raise e.args[0] from None
    except BaseException as e:
        if not onnx_written:
            raise
        try:
            card_file.unlink(missing_ok=True)
            fate = f"the stale model card {card_file} was removed"
        except OSError as e2:
            fate = f"delete the stale model card {card_file} ({describe_os_error(e2)} removing it)"
        if not isinstance(e, OutputError):
            raise
        cause = e.__context__ if isinstance(e.__context__, OSError) else None
        reason = describe_os_error(cause) if cause is not None else str(e)
        raise OutputError(
            f"{out}: ONNX model written, but its model card could not be written ({reason}); {fate}"
        ) from None


def export_onnx(
    model: nn.Module, out: str | Path, *, imgsz: int, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True
) -> Path:
    """Export ``model`` (a ``MultiTaskAdapter``, eval mode) to ``out`` and write ``<out>.json`` beside it.

    Args:
        model: the adapter; it is put in eval mode, float32 and on the CPU (in place) and traced there.
        out: ONNX file to write (parent folders are created); both files are replaced atomically, as a pair
            (see the module docstring).
        imgsz: square input size ``S`` the graph is traced at (the batch axis may be dynamic, H and W are not).
        opset: ONNX opset version, ``MIN_OPSET``..``MAX_OPSET``.
        dynamic_batch: make axis 0 of the input and of every output dynamic (``"batch"``).

    Returns the ONNX path. Raises ``ConfigError`` for a bad ``imgsz``/``opset`` and ``OutputError`` when
    ``out`` cannot be written; the previous files are then untouched.
    """
    _check_imgsz(imgsz)
    _check_opset(opset)
    out = Path(out)
    _check_out(out)
    model = model.eval().float().cpu()
    wrapper = FlatOutputs(model).eval()
    example = torch.rand(1, 3, imgsz, imgsz)
    with torch.no_grad():
        names = wrapper.output_names(example)
        shapes = [list(t.shape) for t in wrapper(example)]
    axes = {n: {0: "batch"} for n in ["images", *names]} if dynamic_batch else None
    with warnings.catch_warnings():  # the legacy-exporter deprecation notice (see module docstring)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        buffer = io.BytesIO()  # into memory: nothing on disk changes unless the export succeeds
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    card = model_card(
        model, imgsz=imgsz, output_names=names, output_shapes=shapes, opset=opset, dynamic_batch=dynamic_batch
    )
    _write_onnx_and_card(out, buffer.getvalue(), card)
    return out


def model_card(
    model: nn.Module,
    *,
    imgsz: int,
    output_names: list[str],
    output_shapes: list[list[int]],
    opset: int,
    dynamic_batch: bool,
) -> dict[str, Any]:
    """What a deployment needs to feed the graph and decode its outputs (JSON-like)."""
    spec = model.det_spec() if hasattr(model, "det_spec") else None
    det: dict[str, Any] | None = None
    if spec is not None:
        det = {
            "kind": spec.kind,
            "num_classes": spec.num_classes,
            "strides": list(spec.strides),
            "anchors": [[list(a) for a in level] for level in spec.anchors] if spec.anchors else None,
            "reg_max": spec.reg_max,
        }
    return {
        "format": "mtkd-onnx",
        "input": {
            "name": "images",
            "shape": ["batch" if dynamic_batch else 1, 3, imgsz, imgsz],
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "range": [0.0, 1.0],
        },
        "outputs": [
            {"name": n, "shape": ["batch" if dynamic_batch else 1, *s[1:]]}
            for n, s in zip(output_names, output_shapes)
        ],
        "names": _names(model),
        "det": det,
        "seg": _seg_card(output_names),
        "imgsz": imgsz,
        "opset": opset,
        "adapter": getattr(model, "adapter_name", type(model).__name__),
    }


def _names(model: nn.Module) -> dict[str, Any]:
    """``{"det": [...], "seg": [...]}``, or ``{"det": [...], "seg_tasks": {task: [...]}}`` (several seg tasks)."""
    from mtkd.checkpoint import model_names

    if hasattr(model, "det_names") and (hasattr(model, "seg_tasks") or hasattr(model, "seg_names")):
        return model_names(model)
    return {"det": list(getattr(model, "det_names", [])), "seg": list(getattr(model, "seg_names", []))}


def _seg_card(output_names: list[str]) -> dict[str, Any] | None:
    """How to read the seg outputs: logits at input resolution; with several tasks, which output is which."""
    if "seg" in output_names:
        return {"logits": True, "resolution": "input"}
    tasks = {n[len("seg_") :]: n for n in output_names if n.startswith("seg_")}
    return {"logits": True, "resolution": "input", "tasks": tasks} if tasks else None


def _median_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def verify_onnx(
    model: nn.Module,
    path: str | Path,
    imgsz: int,
    *,
    batch: int = 2,
    tol: float = 1e-4,
    seed: int = 0,
    warmup: int = 2,
    iters: int = 10,
) -> dict[str, Any]:
    """Run PyTorch and onnxruntime (``CPUExecutionProvider``) on the same seeded ``[batch, 3, S, S]`` input.

    ``batch`` defaults to 2 while the export traces batch 1, so this also checks the dynamic batch axis.

    Returns ``{"ok", "tol", "batch", "imgsz", "max_abs_diff": {output: float},
    "latency_ms": {"torch": median, "onnxruntime": median}, "threads"}``; ``ok`` is False when an output is
    missing, has another shape, or differs by more than ``tol``.
    """
    import onnxruntime as ort

    model = model.eval().float().cpu()
    wrapper = FlatOutputs(model).eval()
    x = torch.rand(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # same threads for a fair comparison
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    onnx_names = [o.name for o in session.get_outputs()]
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        names = wrapper.output_names(x)
        ref = dict(zip(names, wrapper(x)))
        torch_ms = _median_ms(lambda: wrapper(x), warmup, iters)
    got = dict(zip(onnx_names, session.run(None, feed)))
    ort_ms = _median_ms(lambda: session.run(None, feed), warmup, iters)
    diffs: dict[str, float] = {}
    for name in names:
        if name not in got or tuple(got[name].shape) != tuple(ref[name].shape):
            diffs[name] = float("inf")
        else:
            diffs[name] = float(np.abs(got[name] - ref[name].numpy()).max()) if got[name].size else 0.0
    return {
        "ok": all(d <= tol for d in diffs.values()) and set(onnx_names) == set(names),
        "tol": tol,
        "batch": batch,
        "imgsz": imgsz,
        "max_abs_diff": diffs,
        "latency_ms": {"torch": torch_ms, "onnxruntime": ort_ms},
        "threads": torch.get_num_threads(),
    }


def _parser() -> argparse.ArgumentParser:
    from mtkd.models.trust import add_trust_code_argument

    p = argparse.ArgumentParser(
        prog="mtkd export",
        description="Export a safe mtkd checkpoint to ONNX (seg + raw det outputs, dynamic batch axis).",
    )
    p.add_argument("--weights", required=True, help="safe mtkd checkpoint (.pt)")
    p.add_argument("--out", required=True, help="ONNX file to write; <out>.json gets the model card")
    p.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help=f"input size (default: the checkpoint's config imgsz, else {DEFAULT_IMGSZ})",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with PyTorch; report latencies")
    p.add_argument("--batch", type=int, default=2, help="batch size for --verify (default 2)")
    p.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed by --verify")
    p.add_argument(
        "--runs", type=int, default=10, help="timed runs per runtime for --verify (median reported)"
    )
    add_trust_code_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``mtkd export --weights W --out model.onnx [--imgsz S] [--verify]``; exit 1 when --verify fails."""
    args = _parser().parse_args(argv)
    from mtkd.checkpoint import load_checkpoint
    from mtkd.models import load_model
    from mtkd.models.trust import trust_from_args

    for flag, value in (("--batch", args.batch), ("--runs", args.runs)):
        if value < 1:
            raise ConfigError(f"{flag}: expected a positive integer, got {value}")
    _check_opset(args.opset, "--opset")
    _check_out(Path(args.out))
    ckpt = load_checkpoint(args.weights)
    imgsz = args.imgsz
    if imgsz is None:
        cfg_imgsz = (ckpt.get("config") or {}).get("imgsz")
        imgsz = int(cfg_imgsz) if isinstance(cfg_imgsz, (int, float)) else DEFAULT_IMGSZ
    _check_imgsz(imgsz)
    model = load_model(ckpt, trust_code=trust_from_args(args.trust_code), where=str(args.weights))
    path = export_onnx(model, args.out, imgsz=imgsz, opset=args.opset, dynamic_batch=not args.static_batch)
    size_mb = path.stat().st_size / 2**20
    print(
        f"exported {args.weights} -> {path} ({size_mb:.2f} MiB, imgsz {imgsz}, opset {args.opset}); "
        f"model card: {path}.json"
    )
    if not args.verify:
        return 0
    batch = 1 if args.static_batch else args.batch
    res = verify_onnx(model, path, imgsz, batch=batch, tol=args.tol, iters=args.runs)
    lat = res["latency_ms"]
    print(
        f"verify (batch {batch}, {res['threads']} threads): max abs diff {format_diffs(res['max_abs_diff'])}"
    )
    print(f"latency median: torch {lat['torch']:.2f} ms, onnxruntime {lat['onnxruntime']:.2f} ms")
    if not res["ok"]:
        print(f"verify FAILED: an output differs by more than {args.tol:g}")
        return 1
    print(f"verify OK (tol {args.tol:g})")
    return 0
