"""Trainer set-up: run dir, resume resolution, student/teacher/distillation-loss construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.config import TrainConfig, build_config
from mtkd.errors import CompatibilityError, ConfigError

#: keys that may differ between a resumed run's saved config and the command that resumes it
RESUME_MUTABLE = ("resume", "device", "workers", "epochs", "exist_ok", "tensorboard", "project", "name")


def resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None, Path]:
    """``(config to train with, checkpoint to resume or None, run dir)``.

    ``resume=true`` continues ``{project}/{name}/weights/last.pt``; ``resume=PATH`` continues that file (its run
    dir is ``PATH/../..``). The saved config is used; the command's config may differ from it only in
    ``RESUME_MUTABLE`` keys (``epochs`` extends or shortens the run), otherwise ``ConfigError`` names the key.
    """
    if cfg.resume is False:
        return cfg, None, cfg.run_dir
    from mtkd.engine.checkpoint import load_checkpoint

    path = cfg.run_dir / "weights" / "last.pt" if cfg.resume is True else Path(cfg.resume)
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint to resume at {path} (train without resume=true first)")
    ckpt = load_checkpoint(path)
    if "train" not in ckpt or "optimizer" not in ckpt["train"]:
        raise ConfigError(f"resume: {path} has no training state (is it a best.pt or an exported model?)")
    try:
        saved = build_config(ckpt["config"])
    except ConfigError as e:
        raise ConfigError(f"resume: {path}: saved config is invalid: {e}") from None
    new, old = cfg.to_dict(), saved.to_dict()
    for k in new:
        if k not in RESUME_MUTABLE and new[k] != old[k]:
            raise ConfigError(f"resume: '{k}' is {new[k]!r} but the run being resumed used {old[k]!r}; resume keeps "
                              f"the saved config (only {', '.join(RESUME_MUTABLE[1:5])} may change) — start a new run "
                              f"with another name= to change it")
    run_dir = path.parent.parent
    merged = saved.replace(**{k: new[k] for k in ("device", "workers", "epochs", "tensorboard", "resume")},
                           project=str(run_dir.parent), name=run_dir.name)
    done = int(ckpt["train"]["epoch"])
    if done >= merged.epochs:
        raise ConfigError(f"resume: {path} already finished {done} of epochs={merged.epochs}; "
                          f"pass epochs=N (N > {done}) to train longer")
    return merged, ckpt, run_dir


def prepare_run_dir(cfg: TrainConfig, run_dir: Path, resuming: bool, create: bool = True) -> None:
    """Refuse to overwrite a started run unless ``exist_ok`` or resuming (checked on every rank, so all ranks
    fail alike); with ``create`` (rank 0) make ``run_dir/weights`` and drop a fresh run's stale files."""
    if not resuming and (run_dir / "weights" / "last.pt").exists() and not cfg.exist_ok:
        raise ConfigError(f"name: run dir {run_dir} already holds a run; pass resume=true to continue it, "
                          f"exist_ok=true to overwrite it, or another name=")
    if not create:
        return
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    if not resuming:
        for stale in ("results.csv", "weights/best.pt"):
            (run_dir / stale).unlink(missing_ok=True)


def _check_names(model: nn.Module, spec: Any, who: str) -> None:
    for task in ("det", "seg"):
        have, want = list(getattr(model, f"{task}_names")), list(getattr(spec, f"{task}_names"))
        if have and have != want:
            raise CompatibilityError(f"{who}: {task} classes {have} differ from the dataset's {want} ({spec.yaml_path})")


def build_student(cfg: TrainConfig, spec: Any, arch: dict | None = None) -> nn.Module:
    """The student: from ``arch`` (resume), from ``student=`` weights, or fresh from ``model``/``head``."""
    from mtkd.models import build_from_arch, build_model, load_model

    if arch is not None:
        model = build_from_arch(arch)
    elif cfg.student is not None:
        model = load_model(cfg.student)
        _check_names(model, spec, f"student {cfg.student}")
    else:
        model = build_model(cfg.model, nc_det=spec.nc_det, nc_seg=spec.nc_seg, head=cfg.head,
                            det_names=spec.det_names, seg_names=spec.seg_names)
    return model


def build_teacher(cfg: TrainConfig, spec: Any, student: nn.Module, device: torch.device) -> nn.Module | None:
    """The frozen teacher (``requires_grad=False``, eval mode, never trained), checked against the student."""
    if cfg.teacher is None:
        return None
    from mtkd.models import check_compatible, load_model

    teacher = load_model(cfg.teacher)
    _check_names(teacher, spec, f"teacher {cfg.teacher}")
    check_compatible(teacher, student)
    return freeze(teacher).to(device)


def freeze(model: nn.Module) -> nn.Module:
    """No grads, eval mode, and ``.train()`` becomes a no-op so a caller cannot switch it back by accident."""
    model.requires_grad_(False)
    model.eval()
    model.train = lambda mode=True: model  # type: ignore[method-assign]
    return model


@torch.no_grad()
def feature_channels(model: nn.Module, names: list[str], imgsz: int, device: torch.device) -> dict[str, int]:
    """``{name: C}`` of the requested feature taps, from one dummy forward in eval mode."""
    was = model.training
    model.eval()
    out = model(torch.zeros(1, 3, imgsz, imgsz, device=device), features=names)
    nn.Module.train(model, was)
    return {n: int(f.shape[1]) for n, f in out.features.items()}


def distill_section(cfg: TrainConfig, ignore_index: int) -> dict[str, Any]:
    """The mapping ``DistillLoss.from_config`` takes, from the flat KD keys and the ``distill`` section."""
    d = cfg.to_dict()
    fk = d["distill"]["feat_kd"]
    feat = ({"names": fk["names"], "kind": fk["kind"], "weight": fk["weight"], "connector_bn": fk["connector_bn"],
             **fk["options"]} if fk["names"] else None)
    return {"temperature": d["temperature"], "alpha_seg": d["alpha_seg"], "alpha_det": d["alpha_det"],
            "ratio_seg": d["ratio_seg"], "ratio_det": d["ratio_det"], "seg_kd": d["distill"]["seg_kd"],
            "seg_ignore_index": ignore_index, "det_kd": d["distill"]["det_kd"], "feat_kd": feat}


def build_distill(cfg: TrainConfig, spec: Any, student: nn.Module, teacher: nn.Module | None,
                  device: torch.device) -> nn.Module | None:
    """``DistillLoss`` with its connectors built from both models' feature channels (None without a teacher)."""
    if teacher is None:
        return None
    from mtkd.losses.combine import DistillLoss

    loss = DistillLoss.from_config(distill_section(cfg, spec.ignore_index))
    names = loss.feature_names
    if names:
        loss.build(feature_channels(student.to(device), names, cfg.imgsz, device),
                   feature_channels(teacher, names, cfg.imgsz, device))
    return loss.to(device)
