"""Strict, typed training config: YAML files + ``key=value`` overrides → a frozen ``TrainConfig``.

Grammar (``tools/train.py CONFIG [key=value ...]``):
    - flat keys: ``epochs=10 batch=8 teacher=runs/teacher/weights/best.pt``;
    - nested keys with dots: ``optim.lr=0.01 distill.feat_kd.weight=0.5 distill.feat_kd.names=[p3,p4]``;
    - a key of a section may also be given flat when no other section has it: ``lr=0.01`` == ``optim.lr=0.01``;
    - values are parsed as YAML (``true``, ``null``, ``[a, b]``, ``{kind: linear, start: 0.9, end: 0.1}``).
A config file may start from another one with ``base: other.yaml`` (path relative to the file).
Relative paths inside the config (``data``, ``teacher``, ``student``, ``project``) are resolved against the
current working directory, like every CLI path.

Every value is type- and range-checked: an unknown key raises ``ConfigError`` with a "did you mean"
suggestion, a bad value names the key, the value and the allowed type/range. Distillation is on iff
``teacher`` is set.

The one schema: distillation (``temperature``, ``alpha_*``, ``ratio_*``, ``distill.*``) and ``aug.*`` are
validated here only, with their defaults; classes take typed values. Imports only mtkd.errors and mtkd.utils.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError
from mtkd.utils.atomic import write_text
from mtkd.utils.config_files import deep_merge, parse_overrides, read_yaml_with_base
from mtkd.utils.feat_names import check_feat_kd_names
from mtkd.utils.typed_config import (
    Schedulable,
    build_dataclass,
    field_meta,
    plain,
    typed_options,
)


def _imgsz_check(v: int) -> str | None:
    return None if v % 32 == 0 else "must be a multiple of 32"


def _device_check(v: str) -> str | None:
    return None if re.fullmatch(r"cpu|cuda(:\d+)?", v) else "expected 'cpu', 'cuda' or 'cuda:N'"


_POSITIVE, _NON_NEGATIVE = (0.0, math.inf, False, False), (0.0, math.inf, True, False)  # (0, inf), [0, inf)
_UNIT, _COUNT = (0.0, 1.0, True, True), (1, 100_000, True, True)  # [0, 1], [1, 100000]


def _scale_check(v: tuple) -> str | None:
    return None if len(v) == 2 and 0 < v[0] <= v[1] else "expected [low, high] with 0 < low <= high"


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = field(default="adamw", metadata=field_meta("optimizer", choices=("adamw", "sgd")))
    lr: float = field(
        default=1e-3, metadata=field_meta("peak learning rate", range_=(0.0, 10.0, False, True))
    )
    weight_decay: float = field(
        default=5e-4,
        metadata=field_meta("weight decay (not on biases/norms)", range_=(0.0, 1.0, True, False)),
    )
    momentum: float = field(
        default=0.937, metadata=field_meta("SGD momentum / AdamW beta1", range_=(0.0, 1.0, True, False))
    )
    warmup_epochs: float = field(
        default=1.0,
        metadata=field_meta("linear LR warmup length in epochs (per iteration)", range_=_NON_NEGATIVE),
    )
    warmup_start: float = field(
        default=0.1, metadata=field_meta("LR factor at the start of warmup", range_=_UNIT)
    )
    final_lr: float = field(
        default=0.01, metadata=field_meta("cosine end LR as a factor of lr", range_=_UNIT)
    )
    grad_clip: float = field(
        default=10.0, metadata=field_meta("max gradient L2 norm; 0 = off", range_=_NON_NEGATIVE)
    )


@dataclass(frozen=True)
class DetKDConfig:
    weight: float = field(
        default=1.0, metadata=field_meta("multiplies box + obj + cls KD", range_=_NON_NEGATIVE)
    )
    weight_by_teacher: bool = field(default=True, metadata=field_meta("weight anchors by teacher confidence"))
    ld: bool = field(default=False, metadata=field_meta("anchor-free heads: KL over DFL bins instead of MSE"))
    temperature: float | None = field(
        default=None, metadata=field_meta("LD temperature; null = follow temperature", range_=_POSITIVE)
    )


#: ``distill.feat_kd.options`` per kind: ``{kind: {option: (type, metadata)}}``; an option not given takes its
#: loss class's default (``mtkd.losses.feature_kd``), the only default it has.
FEAT_KD_OPTIONS: dict[str, dict[str, tuple[type, dict]]] = {
    "fitnet": {},
    "at": {"p": (float, field_meta("attention map exponent", range_=_POSITIVE))},
    "sp": {},
    "cc": {
        "kernel": (str, field_meta("correlation kernel", choices=("gaussian", "bilinear"))),
        "gamma": (float, field_meta("Gaussian kernel width", range_=_POSITIVE)),
        "order": (int, field_meta("Taylor order of the Gaussian kernel", range_=(1, 100, True, True))),
    },
    "cwd": {"temperature": (float, field_meta("CWD temperature", range_=_POSITIVE))},
    "pkd": {},
    "score_l2": {},
    "mgd": {
        "mask_ratio": (float, field_meta("fraction of positions masked", range_=(0.0, 1.0, True, False)))
    },
}

#: ``seg_tasks.<task>`` options (a dataset with several seg tasks): the task's own ``alpha_seg`` / ``ratio_seg``
SEG_TASK_OPTIONS: dict[str, tuple[Any, dict]] = {
    "alpha": (Schedulable, field_meta("the task's seg KD mix", range_=_UNIT)),
    "ratio": (float, field_meta("the task's weight in the loss", range_=_NON_NEGATIVE)),
}

#: ``distill.seg_kd_options`` per ``distill.seg_kd`` kind, like ``FEAT_KD_OPTIONS``; an option not given takes the
#: default of its loss function (``mtkd.losses.logit_kd``), the only default it has.
SEG_KD_OPTIONS: dict[str, dict[str, tuple[type, dict]]] = {
    "kl": {},
    "cwd": {},
    "dist": {
        "beta": (float, field_meta("inter-class (per-pixel) relation weight", range_=_NON_NEGATIVE)),
        "gamma": (float, field_meta("intra-class (per-class) relation weight", range_=_NON_NEGATIVE)),
        "tau": (float, field_meta("softmax temperature (not the schedule)", range_=_POSITIVE)),
    },
}


@dataclass(frozen=True)
class FeatKDConfig:
    names: tuple[str, ...] = field(
        default=(), metadata=field_meta("feature taps to distill, e.g. [p3, p4, p5]; [] = off")
    )
    kind: str = field(default="fitnet", metadata=field_meta("feature loss", choices=tuple(FEAT_KD_OPTIONS)))
    weight: float = field(default=1.0, metadata=field_meta("feature KD weight", range_=_NON_NEGATIVE))
    connector_bn: bool = field(default=True, metadata=field_meta("BatchNorm after connector convs"))
    options: dict = field(default_factory=dict, metadata=field_meta("kind options (FEAT_KD_OPTIONS)"))
    teacher_names: dict = field(default_factory=dict, metadata=field_meta("student tap -> teacher tap"))

    def __post_init__(self) -> None:
        """Checks across fields: unique tap names, ``teacher_names`` keys among them (``check_feat_kd_names``);
        ``options`` of ``kind`` only (coerced to their type)."""
        check_feat_kd_names(self.names, self.teacher_names)
        options = typed_options("distill.feat_kd.options", self.kind, self.options, FEAT_KD_OPTIONS)
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class DistillConfig:
    seg_kd: str = field(default="kl", metadata=field_meta("seg logit KD", choices=tuple(SEG_KD_OPTIONS)))
    seg_kd_options: dict = field(default_factory=dict, metadata=field_meta("seg_kd options (SEG_KD_OPTIONS)"))
    seg_kd_at: str = field(
        default="head",
        metadata=field_meta(
            "seg KD on the heads' logits before upsampling, or at input size", choices=("head", "input")
        ),
    )
    det_kd: DetKDConfig = field(default_factory=DetKDConfig, metadata=field_meta("detection logit KD"))
    feat_kd: FeatKDConfig = field(default_factory=FeatKDConfig, metadata=field_meta("feature distillation"))
    off_last_epochs: int = field(
        default=0,
        metadata=field_meta("no KD in the last N epochs (task losses only)", range_=(0, 100_000, True, True)),
    )

    def __post_init__(self) -> None:
        """``seg_kd_options`` of ``seg_kd`` only (coerced to their type)."""
        options = typed_options("distill.seg_kd_options", self.seg_kd, self.seg_kd_options, SEG_KD_OPTIONS)
        object.__setattr__(self, "seg_kd_options", options)


@dataclass(frozen=True)
class AugConfig:
    """Training augmentation strengths (``mtkd.data.transforms.AugmentParams`` is this class); the defaults
    suit 128-640 px multi-task training."""

    scale: tuple[float, float] = field(
        default=(0.5, 1.5),
        metadata=field_meta("random long side range [low, high], as a multiple of imgsz", check=_scale_check),
    )
    hflip: float = field(default=0.5, metadata=field_meta("probability of a horizontal flip", range_=_UNIT))
    brightness: float = field(
        default=0.3, metadata=field_meta("colour jitter brightness", range_=_NON_NEGATIVE)
    )
    contrast: float = field(default=0.3, metadata=field_meta("colour jitter contrast", range_=_NON_NEGATIVE))
    saturation: float = field(
        default=0.5, metadata=field_meta("colour jitter saturation", range_=_NON_NEGATIVE)
    )
    hue: float = field(default=0.015, metadata=field_meta("colour jitter hue", range_=(0.0, 0.5, True, True)))
    jitter_p: float = field(
        default=0.8, metadata=field_meta("probability of the colour jitter", range_=_UNIT)
    )
    min_visibility: float = field(
        default=0.2, metadata=field_meta("drop a box keeping less area", range_=_UNIT)
    )
    min_area: float = field(
        default=4.0, metadata=field_meta("drop a smaller box (px²)", range_=_NON_NEGATIVE)
    )


@dataclass(frozen=True)
class TrainConfig:
    data: str = field(default="datasets/shapes.yaml", metadata=field_meta("dataset descriptor YAML"))
    model: str | dict = field(
        default="yolo_mt_n", metadata=field_meta("student model name or adapter config")
    )
    head: str = field(
        default="anchor", metadata=field_meta("detection head", choices=("anchor", "anchor_free"))
    )
    imgsz: int = field(
        default=128, metadata=field_meta("image size", range_=(32, 8192, True, True), check=_imgsz_check)
    )
    epochs: int = field(default=50, metadata=field_meta("total epochs", range_=_COUNT))
    batch: int = field(
        default=16,
        metadata=field_meta("global batch size (split over DDP ranks)", range_=(1, 65_536, True, True)),
    )
    workers: int = field(
        default=2, metadata=field_meta("dataloader workers per rank", range_=(0, 64, True, True))
    )
    device: str = field(default="cpu", metadata=field_meta("device", check=_device_check))
    seed: int = field(default=0, metadata=field_meta("random seed", range_=(0, 2**31 - 1, True, True)))
    project: str = field(default="runs", metadata=field_meta("runs folder"))
    name: str = field(default="train", metadata=field_meta("run name: the run dir is {project}/{name}"))
    exist_ok: bool = field(default=False, metadata=field_meta("reuse an existing run dir (overwrite)"))
    teacher: str | dict | None = field(
        default=None, metadata=field_meta("teacher checkpoint or model config dict; null = plain training")
    )
    student: str | None = field(
        default=None, metadata=field_meta("initial student weights (e.g. a pruned checkpoint)")
    )
    trust_code: bool | tuple[str, ...] = field(
        default=False,
        metadata=field_meta(
            "import paths (package.module:Class) that the teacher/student/resume checkpoints may import to rebuild a "
            "generic-adapter model; true = any path those files name (only for files you trust)"
        ),
    )
    resume: bool | str = field(
        default=False, metadata=field_meta("true: continue {project}/{name}; or a last.pt path")
    )
    temperature: Schedulable = field(
        default=4.0, metadata=field_meta("KD temperature", range_=(0.0, math.inf, False, False))
    )
    alpha_seg: Schedulable = field(
        default=0.5, metadata=field_meta("seg KD mix", range_=(0.0, 1.0, True, True))
    )
    alpha_det: Schedulable = field(
        default=0.5, metadata=field_meta("det KD mix", range_=(0.0, 1.0, True, True))
    )
    ratio_seg: float = field(
        default=1.0, metadata=field_meta("seg task weight", range_=(0.0, math.inf, True, False))
    )
    ratio_det: float = field(
        default=1.0, metadata=field_meta("det task weight", range_=(0.0, math.inf, True, False))
    )
    amp: str = field(
        default="off",
        metadata=field_meta("mixed precision (fp16: CUDA only)", choices=("off", "bf16", "fp16")),
    )
    ema: bool = field(default=True, metadata=field_meta("keep an EMA of the student (saved as the model)"))
    ema_decay: float = field(
        default=0.9999, metadata=field_meta("EMA decay", range_=(0.0, 1.0, False, False))
    )
    ema_tau: float = field(
        default=2000.0, metadata=field_meta("EMA warmup (updates)", range_=(0.0, math.inf, False, False))
    )
    channels_last: bool = field(
        default=False,
        metadata=field_meta(
            "channels_last memory format for the models' weights and the images (CUDA conv speed)"
        ),
    )
    compile: bool = field(
        default=False,
        metadata=field_meta("torch.compile the models' forwards (student, teacher); torch >= 2.2"),
    )
    eval_every: int = field(
        default=1, metadata=field_meta("evaluate every N epochs and at the last", range_=_COUNT)
    )
    patience: int = field(
        default=0,
        metadata=field_meta(
            "stop after N evals without improvement; 0 = off", range_=(0, 100_000, True, True)
        ),
    )
    conf: float = field(
        default=0.001, metadata=field_meta("eval NMS confidence", range_=(0.0, 1.0, True, True))
    )
    iou: float = field(default=0.6, metadata=field_meta("eval NMS IoU", range_=(0.0, 1.0, False, True)))
    val_cache: str = field(
        default="auto",
        metadata=field_meta(
            "keep the prepared val items in RAM between evaluations: auto = when the split fits in 10% of "
            "the available memory",
            choices=("auto", "ram", "off"),
        ),
    )
    augment: bool = field(default=True, metadata=field_meta("train-time augmentation"))
    aug: AugConfig = field(
        default_factory=AugConfig, metadata=field_meta("augmentation strengths ({} = defaults)")
    )
    tensorboard: bool = field(default=True, metadata=field_meta("write TensorBoard logs to the run dir"))
    optim: OptimConfig = field(default_factory=OptimConfig, metadata=field_meta("optimizer and LR schedule"))
    distill: DistillConfig = field(default_factory=DistillConfig, metadata=field_meta("distillation options"))
    seg_tasks: dict = field(
        default_factory=dict,
        metadata=field_meta(
            "per seg task of a seg_tasks dataset: {task: {alpha, ratio}} (else alpha_seg, ratio_seg)"
        ),
    )

    def __post_init__(self) -> None:
        tasks = {}
        for task, opts in self.seg_tasks.items():
            if not isinstance(opts, Mapping):
                raise ConfigError(f"seg_tasks.{task}: expected a mapping {{alpha, ratio}}, got {opts!r}")
            tasks[str(task)] = typed_options(
                f"seg_tasks.{task}", "seg task", opts, {"seg task": SEG_TASK_OPTIONS}
            )
        object.__setattr__(self, "seg_tasks", tasks)
        if self.amp == "fp16" and self.device == "cpu":
            raise ConfigError("amp: 'fp16' needs a CUDA device (device=cpu); use amp=bf16 or amp=off on CPU")
        if self.teacher is not None and self.distill.off_last_epochs >= self.epochs:
            raise ConfigError(
                f"distill.off_last_epochs: {self.distill.off_last_epochs} must be < epochs ({self.epochs}), "
                "else distillation never runs"
            )

    @property
    def distilling(self) -> bool:
        return self.teacher is not None

    @property
    def run_dir(self) -> Path:
        return Path(self.project) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (lists, not tuples): YAML- and ``weights_only``-checkpoint safe. ``aug`` keeps only its
        non-default keys (``{}`` = all defaults), so config files and checkpoints read as before it was typed."""
        d = plain(dataclasses.asdict(self))
        d["aug"] = {k: v for k, v in d["aug"].items() if v != plain(getattr(AugConfig, k))}
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with top-level fields changed."""
        return build_config({**self.to_dict(), **changes})


def _sections() -> dict[str, set[str]]:
    hints = typing.get_type_hints(TrainConfig)
    return {
        n: {f.name for f in dataclasses.fields(tp)} for n, tp in hints.items() if dataclasses.is_dataclass(tp)
    }


def _resolve_aliases(raw: dict) -> dict:
    """Move flat keys that name a field of exactly one section into it (``lr`` → ``optim.lr``)."""
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {k: v for k, v in raw.items()}
    for k in list(out):
        if k in top:
            continue
        owners = [s for s, names in _sections().items() if k in names]
        if len(owners) == 1:
            section = dict(out.get(owners[0]) or {})
            section[k] = out.pop(k)
            out[owners[0]] = section
    return out


def build_config(raw: Mapping[str, Any]) -> TrainConfig:
    """Validate a nested mapping into a ``TrainConfig`` (raises ``ConfigError``)."""
    return build_dataclass(TrainConfig, _resolve_aliases(dict(raw)))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load ``path`` (YAML, optional ``base:``), apply ``key=value`` overrides, validate.

    Raises ``ConfigError`` naming the file/key for every problem.
    """
    from_file = _resolve_aliases(read_yaml_with_base(Path(path))) if path is not None else {}
    try:
        return build_config(deep_merge(from_file, _resolve_aliases(parse_overrides(overrides))))
    except ConfigError:
        if path is None:
            raise
        try:  # blame the file when the file alone is wrong; else the problem came from an override
            build_config(from_file)
        except ConfigError as file_error:
            raise ConfigError(f"{path}: {file_error}") from None
        raise


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (re-loadable with ``load_config``)."""
    return write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False), what="config")
