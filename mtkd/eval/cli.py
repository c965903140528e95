"""``mtkd eval`` / ``tools/eval.py``: accuracy, speed and size of one checkpoint → metrics JSON + table.

    tools/eval.py --weights W [--data D] [--split val] [--out metrics.json] [--save-predictions DIR]

``--data`` defaults to the data YAML recorded in the checkpoint's config. The JSON follows DESIGN.md §4;
``model.weights`` and ``artifacts.predictions_dir`` (relative to the JSON's folder) let ``mtkd report`` find
the checkpoint and the sample overlays.

``--out`` and the COCO files of ``--save-predictions`` are written atomically (``mtkd.utils.atomic``): a failed
write leaves the previous file untouched. Both destinations are checked before the evaluation starts, so an
unwritable folder is reported at once, as one line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mtkd.errors import ConfigError, OutputError
from mtkd.utils.atomic import ensure_parent, write_text

DEFAULT_IMGSZ = 640


def _parser() -> argparse.ArgumentParser:
    from mtkd.models.trust import add_trust_code_argument

    p = argparse.ArgumentParser(
        prog="mtkd eval", description="Evaluate mAP, mIoU, speed and size of a checkpoint."
    )
    p.add_argument("--weights", required=True, help="mtkd checkpoint (.pt)")
    p.add_argument("--data", help="dataset YAML (default: the one recorded in the checkpoint config)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument(
        "--imgsz", type=int, help="input size (default: checkpoint config, else the dataset's image size)"
    )
    p.add_argument(
        "--batch", type=int, default=8, help="batch size for evaluation and throughput (default: 8)"
    )
    p.add_argument("--workers", type=int, default=2, help="data loader workers (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold before NMS (default: 0.001)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold (default: 0.6)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default: 300)")
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument(
        "--save-predictions",
        metavar="DIR",
        help="write DIR/predictions.json, DIR/ground_truth.json (COCO) and DIR/samples/*.png",
    )
    p.add_argument(
        "--samples", type=int, default=4, help="sample overlays with --save-predictions (default: 4)"
    )
    p.add_argument("--no-speed", action="store_true", help="skip latency/throughput measurement")
    p.add_argument(
        "--speed-iters",
        type=int,
        default=30,
        help="timed passes of a stable latency measurement, in 3 rounds (default: 30)",
    )
    p.add_argument(
        "--speed-tol",
        type=float,
        default=0.05,
        help="latency is timed in rounds until the last 3 round medians agree within this fraction "
        "(default: 0.05)",
    )
    p.add_argument(
        "--speed-budget",
        type=float,
        default=30.0,
        help="seconds after which latency rounds stop even if not stable (reported; default: 30)",
    )
    p.add_argument("--name", help="model name in the JSON/report (default: from the run or file name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_trust_code_argument(p)
    return p


def _model_name(weights: Path, config: dict[str, Any]) -> str:
    """``<run name>/<file stem>`` for a run's ``weights/*.pt``, else the file stem."""
    if weights.parent.name == "weights":
        return f"{config.get('name') or weights.parent.parent.name}/{weights.stem}"
    return weights.stem


def _dataset_imgsz(spec: Any, split: str) -> int:
    """Input size for a checkpoint without a training config (converted, pruned elsewhere): the longer side of the
    split's first image, rounded up to a multiple of 32; ``ConfigError`` asking for ``--imgsz`` if unreadable."""
    from PIL import Image

    from mtkd.data.coco import CocoSource
    from mtkd.data.yolo_mask import YoloMaskSource

    try:
        source = CocoSource(spec, split) if spec.format == "coco" else YoloMaskSource(spec, split)
        with Image.open(source.paths[0]) as im:
            side = max(im.size)
    except Exception as e:
        raise ConfigError(
            f"--imgsz: the checkpoint records no training image size and the {split!r} split's first image "
            f"cannot be read ({type(e).__name__}); pass --imgsz"
        ) from None
    imgsz = max(32, -(-side // 32) * 32)
    print(f"imgsz {imgsz} (the checkpoint records none; from the dataset's {side} px images)")
    return imgsz


def _data_yaml(arg: str | None, config: dict[str, Any], weights: Path) -> Path:
    if arg:
        return Path(arg)
    data = config.get("data")
    if isinstance(data, dict):  # a nested data section
        data = data.get("yaml") or data.get("path")
    if not data:
        raise ConfigError(f"{weights}: the checkpoint records no data YAML; pass --data DATA_YAML")
    if not Path(data).is_file():
        raise ConfigError(
            f"{weights}: recorded data YAML {data!r} not found from here; pass --data DATA_YAML"
        )
    return Path(data)


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.2f}" if pct else f"{v:.2f}"
    return str(v)


def format_table(m: dict[str, Any]) -> str:
    """Human-readable summary of a metrics dict (accuracy in %, per-class values below)."""
    rows: list[tuple[str, str]] = []
    model = m.get("model", {})
    rows.append(("model", str(model.get("name", "?"))))
    if "params" in model:
        rows.append(("params (M)", f"{model['params'] / 1e6:.3f}"))
    if model.get("flops") is not None:
        rows.append(("GFLOPs", f"{model['flops'] / 1e9:.3f}"))
    if model.get("size_mb") is not None:
        rows.append(("size (MiB)", f"{model['size_mb']:.2f}"))
    data = m.get("data", {})
    rows.append(
        ("data", f"{data.get('yaml', '?')} [{data.get('split', '?')}], {data.get('images', '?')} images")
    )
    det, seg, speed = m.get("det"), m.get("seg"), m.get("speed")
    if det:
        for k in ("mAP50_95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100", "recall50"):
            if k in det:
                rows.append((f"det {k} (%)", _fmt(det.get(k))))
    segs = {"seg": seg} if seg else {k: v for k, v in m.items() if str(k).startswith("seg/") and v}
    for key, sm in segs.items():
        for k in ("line_acc", "line_IoU", "mIoU", "pixel_acc", "mAcc"):
            if k in sm:
                rows.append((f"{key} {k} (%)", _fmt(sm.get(k))))
    if speed:
        rows.append(("device / threads", f"{speed.get('device')} / {speed.get('threads')}"))
        rows.append(
            (
                "latency p50 / p90 (ms)",
                f"{_fmt(speed.get('latency_ms_p50'), False)} / {_fmt(speed.get('latency_ms_p90'), False)}"
                f" (batch 1, {speed.get('imgsz')} px)",
            )
        )
        if speed.get("latency_rounds"):
            spread = speed.get("latency_round_spread")
            rows.append(
                (
                    "latency run-to-run spread",
                    ("-" if spread is None else f"{100 * spread:.1f}%")
                    + f" over {speed['latency_rounds']} rounds"
                    + (
                        " (stable)"
                        if speed.get("latency_stable")
                        else f" (NOT stable: {speed.get('latency_stop')})"
                    ),
                )
            )
        if "throughput_ips" in speed:
            rows.append(
                ("throughput (img/s)", f"{speed['throughput_ips']:.1f} (batch {speed['throughput_batch']})")
            )
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    for title, per in (
        ("AP50-95 per class (%)", (det or {}).get("per_class_AP50_95")),
        ("IoU per class (%)", (seg or {}).get("per_class_IoU")),
    ):
        if per:
            lines.append(f"{title}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in per.items()))
    if seg and seg.get("absent_classes"):
        lines.append(f"absent seg classes (left out of mIoU): {', '.join(seg['absent_classes'])}")
    return "\n".join(lines)


def _check_writable_folder(folder: Path, what: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot write the {what} there (permission denied)")


def check_outputs(args: argparse.Namespace) -> None:
    """Fail fast, before a long evaluation, when ``--out`` or ``--save-predictions`` cannot be written.

    Creates the destination folders (as the writes would); ``OutputError`` (one line, naming the path) when
    ``--out`` is a directory, ``--save-predictions`` is a file, or a folder cannot be created or written to.
    """
    if args.out:
        _check_writable_folder(ensure_parent(args.out, "metrics JSON").parent, "metrics JSON")
    if args.save_predictions:
        pred = Path(args.save_predictions)
        if pred.exists() and not pred.is_dir():
            raise OutputError(f"{pred}: --save-predictions expects a folder, but this is an existing file")
        _check_writable_folder(ensure_parent(pred / "predictions.json", "predictions").parent, "predictions")


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Load, evaluate, time; returns the DESIGN.md §4 metrics dict (also written to ``--out``)."""
    import torch

    from mtkd.checkpoint import load_checkpoint
    from mtkd.data.build import build_dataloader
    from mtkd.data.descriptor import load_data_yaml
    from mtkd.eval.evaluate import evaluate_model
    from mtkd.eval.speed import count_flops, count_params, file_size_mb, measure_latency, measure_throughput
    from mtkd.models import load_model
    from mtkd.models.trust import trust_from_args

    for flag, v, lo in (
        ("--batch", args.batch, 1),
        ("--workers", args.workers, 0),
        ("--samples", args.samples, 0),
        ("--speed-iters", args.speed_iters, 1),
    ):
        if v < lo:
            raise ConfigError(f"{flag}: expected an integer >= {lo}, got {v}")
    if not args.speed_tol >= 0 or not args.speed_budget >= 0:
        raise ConfigError(
            f"--speed-tol/--speed-budget: expected values >= 0, got {args.speed_tol}/{args.speed_budget}"
        )
    if not 0 <= args.conf <= 1 or not 0 < args.iou <= 1:
        raise ConfigError(f"--conf/--iou: expected values in [0, 1], got {args.conf}/{args.iou}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    weights = Path(args.weights)
    ckpt = load_checkpoint(weights)
    config = ckpt.get("config") or {}
    data_yaml = _data_yaml(args.data, config, weights)
    spec = load_data_yaml(data_yaml)
    imgsz = args.imgsz or (int(config["imgsz"]) if config.get("imgsz") else _dataset_imgsz(spec, args.split))
    model = load_model(ckpt, trust_code=trust_from_args(args.trust_code), where=str(weights))
    loader = build_dataloader(
        spec,
        args.split,
        imgsz=imgsz,
        batch=args.batch,
        workers=args.workers,
        augment=False,
        shuffle=False,
        ground_truth=True,
    )
    metrics = evaluate_model(
        model,
        loader,
        spec=spec,
        device=device,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        save_predictions=args.save_predictions,
        progress=not args.quiet,
        n_samples=args.samples,
    )
    model_info: dict[str, Any] = {
        "name": args.name or _model_name(weights, config),
        "weights": str(weights.resolve()),
        "adapter": getattr(model, "adapter_name", type(model).__name__),
        "params": count_params(model),
        "flops": count_flops(model, imgsz),
        "flops_note": "FLOPs of one forward pass at batch 1 (multiply-add = 2), torch FlopCounterMode",
        "size_mb": file_size_mb(weights),
        "det_names": list(getattr(model, "det_names", [])),
    }
    if getattr(model, "multi_seg", False):
        model_info["seg_tasks"] = {t: list(n) for t, n in model.seg_tasks.items()}
    else:
        model_info["seg_names"] = list(getattr(model, "seg_names", []))
    out: dict[str, Any] = {"model": model_info}
    out.update({k: v for k, v in metrics.items() if k != "data"})
    if not args.no_speed:
        speed = measure_latency(
            model,
            imgsz,
            device=device,
            batch=1,
            iters=args.speed_iters,
            rel_tol=args.speed_tol,
            budget_s=args.speed_budget,
        )
        speed.update(
            measure_throughput(
                model, imgsz, device=device, batch=args.batch, iters=max(1, args.speed_iters // 3)
            )
        )
        out["speed"] = speed
    out["data"] = {"yaml": str(data_yaml.resolve()), **metrics["data"], "split": args.split, "imgsz": imgsz}
    out["eval"] = {
        "conf": args.conf,
        "iou": args.iou,
        "max_det": args.max_det,
        "det_metric": "COCO bbox mAP (pycocotools definitions: 101-point, IoU .50:.05:.95, maxDets 100)",
        "seg_metric": "dataset-level mIoU, ignore_index excluded, absent classes left out",
    }
    if args.save_predictions:
        pred_dir = Path(args.save_predictions).resolve()
        base = Path(args.out).resolve().parent if args.out else Path.cwd()
        out["artifacts"] = {"predictions_dir": os.path.relpath(pred_dir, base)}
    return out


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    check_outputs(args)
    metrics = run_eval(args)
    print(format_table(metrics))
    if args.out:
        path = write_text(args.out, json.dumps(metrics, indent=2), what="metrics JSON")
        print(f"metrics written to {path}")
    return 0
