"""What one training step computes: the task object (timm ``task/distillation.py`` style).

A task is the ``nn.Module`` the trainer optimises and DDP wraps: ``task(batch, progress) -> terms``, every loss
term by name (DESIGN.md §2, §5). Batch (on the device): ``images float[B, 3, H, W]``, ``masks long[B, H, W]``
(255 = ignore), ``boxes float[N, 4]`` xyxy pixels, ``labels long[N]``, ``batch_idx long[N]``; ``progress`` is
the fraction of training done, in ``[0, 1]``. Terms: ``MAIN_KEYS`` + ``EXTRA_KEYS`` of ``mtkd.losses.combine``
(``seg_loss``, ``seg_kd``, ``det_loss``, ``det_kd``, ``feat_kd``, ``loss``, ...) + the task sub-terms
(``det_box``, ``seg_ce``, ...) + ``feat_kd_<tap>`` per feature tap, all 0-d float32 tensors; ``loss`` is the
one to ``backward()``.

- ``TrainTask``: plain training, ``student`` → ``TaskLoss`` → ``plain_loss`` (KD terms are zeros).
- ``DistillTask``: ``student`` (+ feature taps) → ``TaskLoss``; the teacher (``load_teacher``: a checkpoint or a
  model config dict; frozen, eval mode, under ``torch.no_grad``; its taps as ``distill.feat_kd.teacher_names``
  renames them) → ``DistillLoss``. In the last ``distill.off_last_epochs`` epochs (``DistillLoss.kd_active``
  false) the step is plain training's: no feature taps, no teacher forward, ``plain_loss`` terms. Its modules
  are ``student`` then ``distill`` (the ``DistillLoss`` that owns the feature connectors), so
  ``task.parameters()`` lists the student's parameters first, then the connectors'. The teacher is held outside
  the module tree: not in ``parameters()``/``state_dict()``, not wrapped by DDP, untouched by ``.train()``/``.to()``.

Training state: ``train_state()`` gives the task's own fields of ``last.pt`` (``train.distill``: the connectors'
``state_dict``; ``{}`` for a plain run), ``load_train_state_field`` restores one on resume. ``compile=true``:
``compile_task`` (``check_compile`` refuses in one line where ``torch.compile`` is unavailable) compiles the
student's and the teacher's forwards in place (``compile_models``); the losses stay eager.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtkd.config import TrainConfig
from mtkd.errors import CheckpointError, CompatibilityError, ConfigError


class TrainTask(nn.Module):
    """Plain training of ``student``: ``loss = ratio_det * det_loss + ratio_seg * seg_loss``.

    Args:
        student: the model being trained (``model(images) -> MultiTaskOutput``).
        task_loss: ``TaskLoss`` of the student (``task_loss(out, batch) -> {seg_loss, det_loss, ...}``).
        ratio_seg, ratio_det: task weights (config keys of the same names).
        seg_ratios: per seg task weights of a several-task model (config ``seg_tasks.<task>.ratio``).
    """

    def __init__(
        self,
        student: nn.Module,
        task_loss: Any,
        *,
        ratio_seg: float,
        ratio_det: float,
        seg_ratios: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.task_loss = task_loss
        self.ratio_seg, self.ratio_det = ratio_seg, ratio_det
        self.seg_ratios = dict(seg_ratios or {})

    @property
    def feature_names(self) -> list[str]:
        """Feature taps the step requests from the models (none without feature distillation)."""
        return []

    def forward(self, batch: Mapping[str, Any], progress: float) -> dict[str, Tensor]:
        from mtkd.losses.combine import plain_loss

        out = self.student(batch["images"].float())
        return plain_loss(
            self.task_loss(out, batch),
            ratio_seg=self.ratio_seg,
            ratio_det=self.ratio_det,
            seg_ratios=self.seg_ratios,
        )

    def train_state(self) -> dict[str, Any]:
        """The task's fields of the training state (``last.pt`` ``train.<name>``) besides the student's weights."""
        return {"distill": {}}

    def compile_models(self) -> None:
        """``torch.compile`` the models' forwards in place (``nn.Module.compile``: same modules, parameters and
        ``state_dict`` keys); the losses, with their data-dependent shapes, stay eager."""
        self.student.compile()

    def load_train_state_field(self, name: str, value: Any, where: str) -> None:
        """Restore field ``name`` of ``train_state()`` from a checkpoint (``where`` names it in errors)."""


class DistillTask(TrainTask):
    """``student`` distilled from ``teacher`` through ``distill`` (a ``DistillLoss`` holding the connectors).

    Args:
        student, task_loss: as for ``TrainTask``.
        teacher: the frozen teacher (``mtkd.engine.task.freeze``), kept outside the module tree.
        distill: the ``DistillLoss`` (its ``ratio_seg``/``ratio_det`` weigh the task terms).
    """

    def __init__(self, student: nn.Module, task_loss: Any, teacher: nn.Module, distill: nn.Module) -> None:
        super().__init__(
            student,
            task_loss,
            ratio_seg=distill.ratio_seg,
            ratio_det=distill.ratio_det,
            seg_ratios=distill.task_ratio,
        )
        self.distill = distill  # registered after the student: the optimizer sees student, then connectors
        self.__dict__["teacher"] = teacher  # a plain attribute, not a submodule (outside DDP and state_dict)

    @property
    def feature_names(self) -> list[str]:
        return list(self.distill.feature_names)

    @property
    def teacher_feature_names(self) -> list[str]:
        """The teacher's taps (``distill.feat_kd.teacher_names``; the student's names unless renamed)."""
        return list(self.distill.teacher_feature_names)

    @torch.no_grad()
    def teacher_outputs(self, images: Tensor) -> Any:
        """The frozen teacher's ``MultiTaskOutput`` for distillation, with its feature taps.

        Where its adapter can stop there (``supports_seg_head_resolution``), its seg logits are the head's, before
        the bilinear upsampling to the input size: every seg KD loss resizes the teacher's logits to the student's
        size with that same interpolation (``mtkd.losses.logit_kd.resize_like``) or compares head logits directly
        (``seg_kd_at="head"``), so the terms are those of the upsampled logits (in float32: under autocast the
        resize now runs in float32 instead of the autocast dtype) and the full-size tensor, 64x the head's for the
        built-in head, is never made.
        """
        low = {"seg_upsample": False} if getattr(self.teacher, "supports_seg_head_resolution", False) else {}
        return self.teacher(images, features=self.teacher_feature_names, **low)

    def forward(self, batch: Mapping[str, Any], progress: float) -> dict[str, Tensor]:
        images = batch["images"].float()
        if not self.distill.kd_active(progress):  # distill.off_last_epochs: plain training's step, no teacher
            s_out = self.student(images)
            return self.distill(s_out, None, self.task_loss(s_out, batch), progress, batch)
        # the teacher first: its activations are freed before the student's graph is built (a smaller working
        # set; the student's forward does not depend on it and the frozen teacher draws no random numbers)
        t_out = self.teacher_outputs(images)
        names = self.feature_names
        s_out = self.student(images, features=names) if names else self.student(images)
        task = self.task_loss(s_out, batch)
        return self.distill(s_out, t_out, task, progress, batch)

    def train_state(self) -> dict[str, Any]:
        return {"distill": self.distill.state_dict()}

    def compile_models(self) -> None:
        super().compile_models()
        self.teacher.compile()

    def load_train_state_field(self, name: str, value: Any, where: str) -> None:
        from mtkd.models.build import load_state_strict

        if name == "distill":
            load_state_strict(self.distill, value or {}, where=where)


# ---------------------------------------------------------------------------------------------- construction
def _check_names(model: nn.Module, spec: Any, who: str, *, det: bool = True, seg: bool = True) -> None:
    """The model's class names are the dataset's (``det``/``seg`` false: that task is not compared)."""
    have, want = list(model.det_names), list(spec.det_names)
    if det and have and have != want:
        raise CompatibilityError(
            f"{who}: det classes {have} differ from the dataset's {want} ({spec.yaml_path})"
        )
    from mtkd.models.compat import model_seg_tasks

    have_seg = model_seg_tasks(model)
    want_seg = {t: st.names for t, st in spec.seg_tasks.items()}
    if not have_seg or not seg:
        return
    if list(have_seg) != list(want_seg):
        raise CompatibilityError(
            f"{who}: seg tasks {', '.join(have_seg)} differ from the dataset's {', '.join(want_seg)} ({spec.yaml_path})"
        )
    for t, names in have_seg.items():
        if names and names != want_seg[t]:
            what = "seg classes" if t == "seg" else f"classes of seg task '{t}'"
            raise CompatibilityError(
                f"{who}: {what} {names} differ from the dataset's {want_seg[t]} ({spec.yaml_path})"
            )


def _check_ld(cfg: TrainConfig, student: nn.Module) -> None:
    """``distill.det_kd.ld`` needs DFL bins: refuse it on anchor heads and one-bin heads (YOLO26), never a silent 0."""
    spec = student.det_spec() if cfg.distill.det_kd.ld else None
    if spec is not None and (spec.kind != "anchor_free" or (spec.reg_max or 1) <= 1):
        why = (
            "an anchor head has no DFL bins"
            if spec.kind != "anchor_free"
            else "its head has reg_max=1 (one bin)"
        )
        raise ConfigError(
            f"distill.det_kd.ld: localization distillation compares DFL bin distributions, but {why}; "
            "use distill.det_kd.ld=false (MSE on the box outputs)"
        )


def check_seg_task_options(cfg: TrainConfig, spec: Any) -> None:
    """``ConfigError`` for ``seg_tasks.<task>`` options naming a task the dataset does not have."""
    from mtkd.utils.suggest import did_you_mean

    for t in cfg.seg_tasks:
        if not spec.multi_seg:
            raise ConfigError(
                f"seg_tasks.{t}: the dataset {spec.yaml_path} has one seg task (seg_names); use alpha_seg/ratio_seg"
            )
        if t not in spec.seg_tasks:
            hint = did_you_mean(t, list(spec.seg_tasks)) or f" (its tasks: {', '.join(spec.seg_tasks)})"
            raise ConfigError(f"seg_tasks.{t}: the dataset {spec.yaml_path} has no seg task '{t}'{hint}")


def build_student(cfg: TrainConfig, spec: Any, arch: dict | None = None) -> nn.Module:
    """The student: from ``arch`` (resume), from ``student=`` weights, or fresh from ``model``/``head``."""
    from mtkd.models import build_from_arch, build_model, load_model

    if arch is not None:
        where = str(cfg.run_dir / "weights" / "last.pt" if cfg.resume is True else cfg.resume)
        try:
            model = build_from_arch(arch, trust_code=cfg.trust_code, where=where)
        except ConfigError as e:
            raise CheckpointError(f"{where}: cannot rebuild the model from its arch: {e}") from None
    elif cfg.student is not None:
        model = load_model(cfg.student, trust_code=cfg.trust_code)
        _check_names(model, spec, f"student {cfg.student}")
    elif spec.multi_seg:
        model = build_model(
            cfg.model,
            nc_det=spec.nc_det,
            head=cfg.head,
            det_names=spec.det_names,
            seg_tasks={t: st.names for t, st in spec.seg_tasks.items()},
        )
    else:
        model = build_model(
            cfg.model,
            nc_det=spec.nc_det,
            nc_seg=spec.nc_seg,
            head=cfg.head,
            det_names=spec.det_names,
            seg_names=spec.seg_names,
        )
    return model


def load_teacher(cfg: TrainConfig, spec: Any) -> nn.Module:
    """The teacher of ``cfg.teacher``: a checkpoint path (``load_model``), or a model config dict built with
    ``build_model`` for the dataset's classes; its weights come from the config itself (``generic``
    ``state_dict``, an Ultralytics ``.pt``, ``composite`` members of those). Every ``generic`` ``target`` the dict
    names, composite members included, must be allowed by ``trust_code`` (``mtkd.models.trust``), as for a file."""
    from mtkd.models import build_model, load_model
    from mtkd.models.trust import arch_targets, require_trusted

    if not isinstance(cfg.teacher, Mapping):
        return load_model(cfg.teacher, trust_code=cfg.trust_code)
    for target in arch_targets(cfg.teacher):
        require_trusted(target, cfg.trust_code, "teacher (model config)")
    if spec.multi_seg:
        seg: dict[str, Any] = {"seg_tasks": {t: st.names for t, st in spec.seg_tasks.items()}}
    else:
        seg = {"seg_names": spec.seg_names}
    try:
        return build_model(cfg.teacher, det_names=spec.det_names, **seg)
    except ConfigError as e:
        raise ConfigError(f"teacher: {e}") from None


def _teacher_label(cfg: TrainConfig) -> str:
    if isinstance(cfg.teacher, Mapping):
        return f"teacher ({cfg.teacher.get('adapter', '?')} model config)"
    return f"teacher {cfg.teacher}"


def freeze(model: nn.Module) -> nn.Module:
    """No grads, eval mode, and ``.train()`` becomes a no-op so a caller cannot switch it back by accident."""
    model.requires_grad_(False)
    model.eval()
    model.train = lambda mode=True: model  # type: ignore[method-assign]
    return model


@torch.no_grad()
def feature_channels(model: nn.Module, names: list[str], imgsz: int, device: torch.device) -> dict[str, int]:
    """``{name: C}`` of the requested feature taps, from one dummy forward ``[1, 3, imgsz, imgsz]`` in eval mode."""
    was = model.training
    model.eval()
    out = model(torch.zeros(1, 3, imgsz, imgsz, device=device), features=names)
    nn.Module.train(model, was)
    return {n: int(f.shape[1]) for n, f in out.features.items()}


def _teacher_channels(teacher: nn.Module, distill: Any, imgsz: int, device: torch.device) -> dict[str, int]:
    """``feature_channels`` of the teacher's taps; a tap it does not have is one line naming the config field
    (``distill.feat_kd.teacher_names`` with the name to map to, e.g. a composite teacher's ``det.p3``)."""
    t_names = distill.teacher_feature_names
    try:
        return feature_channels(teacher, t_names, imgsz, device)
    except ConfigError:
        known = list(teacher.feature_names()) if hasattr(teacher, "feature_names") else []
        absent = [n for n in t_names if n not in known]
        if not known or not absent:
            raise
        raise distill.feature.missing_error("teacher", absent, known) from None


def build_task(cfg: TrainConfig, spec: Any, student: nn.Module, device: torch.device) -> TrainTask:
    """The task of ``cfg``: ``TrainTask`` without a teacher; else the frozen teacher (checked against the
    student), the ``DistillLoss`` with its connectors built from both models' feature channels, ``DistillTask``.

    Construction order (fixed: it decides the RNG draws of the connectors' initialisation): teacher, connectors,
    task loss. ``cfg.channels_last``: the 4-D weights of the student, connectors and teacher in that format.
    """
    from mtkd.losses.task import TaskLoss

    if cfg.teacher is None:
        task_loss = TaskLoss(student, ignore_index=spec.ignore_index)
        ratios = {t: o["ratio"] for t, o in cfg.seg_tasks.items() if "ratio" in o}
        task = TrainTask(
            student, task_loss, ratio_seg=cfg.ratio_seg, ratio_det=cfg.ratio_det, seg_ratios=ratios
        )
        return task.to(memory_format=torch.channels_last) if cfg.channels_last else task
    from mtkd.losses.combine import DistillLoss
    from mtkd.models import check_compatible

    teacher = load_teacher(cfg, spec)
    distill = DistillLoss.from_config(cfg, ignore_index=spec.ignore_index)
    det_on, seg_on = distill.det_distilled, distill.seg_distilled
    _check_names(teacher, spec, _teacher_label(cfg), det=det_on, seg=seg_on)
    # a task whose logit KD never counts (alpha 0 all along, or det_kd.weight 0) needs no matching teacher head
    check_compatible(teacher, student, det=det_on, seg=seg_on)
    _check_ld(cfg, student)
    teacher = freeze(teacher).to(device)
    names = distill.feature_names
    if names:
        distill.build(
            feature_channels(student.to(device), names, cfg.imgsz, device),
            _teacher_channels(teacher, distill, cfg.imgsz, device),
        )
    distill = distill.to(device)
    if cfg.channels_last:  # 4-D weights only (nn.Module.to); the teacher is outside the task's module tree
        teacher.to(memory_format=torch.channels_last)
        student.to(memory_format=torch.channels_last)
        distill.to(memory_format=torch.channels_last)
    return DistillTask(student, TaskLoss(student, ignore_index=spec.ignore_index), teacher, distill)


def check_compile(device: torch.device) -> None:
    """``ConfigError`` (one line) where ``torch.compile`` cannot run the training step on ``device``."""
    import os
    import shutil

    why = None
    if not callable(getattr(torch, "compile", None)) or not hasattr(nn.Module, "compile"):
        why = f"torch {torch.__version__} has no nn.Module.compile (torch >= 2.2 needed)"
    else:
        try:
            from torch._dynamo.eval_frame import check_if_dynamo_supported

            check_if_dynamo_supported()
        except ImportError:
            pass
        except Exception as e:  # unsupported Python / platform: torch's own reason
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if why is None and device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            has_triton = None
        if has_triton is not None and not has_triton():
            why = "triton (torch.compile's GPU backend) is not installed"
    elif why is None and device.type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX") or "", "g++", "c++", "clang++", "cl")):
            why = "no C++ compiler found (torch.compile's CPU backend needs one)"
    if why is not None:
        raise ConfigError(f"compile: torch.compile is unavailable here ({why}); use compile=false")


def compile_task(task: TrainTask, device: torch.device) -> None:
    """``compile=true``: ``check_compile``, then ``task.compile_models()`` (in place). Call it after the EMA copy
    is made (a deep copy of a compiled module would call the original's forward)."""
    check_compile(device)
    task.compile_models()
