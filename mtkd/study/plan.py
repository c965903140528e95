"""What a study runs: its options validated into a ``Plan``, the two arms' training configs (checked to share every
setting but the distillation ones), the teacher's config when the study trains it, and the settings recorded in
the study folder (``settings.json``) that a later command must match.

Study folder layout (``Plan.out``)::

    settings.json                  the recorded settings (written before anything runs)
    teacher/                       the teacher's run, when the study trains it (--teacher-epochs)
    student.pt                     the pruned student, when the study prunes it (--ratio / --target-macs)
    runs/{arm}_seed{k}/            one training run per arm and seed (arm: finetune, distill)
    metrics/{name}.json            val metrics of teacher, student and every {arm}_seed{k}: a run is finished
                                   when its metrics file exists
    study.json, report.html, report.md
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtkd.config import OptimConfig, TrainConfig, load_config, parse_overrides
from mtkd.errors import ConfigError

ARMS = ("finetune", "distill")
ARM_NAMES = {"finetune": "fine-tuning", "distill": "distillation"}
SPLIT = "val"  # a study never looks at a test split
DEFAULT_FT_CONFIG = "configs/shapes_student.yaml"
DEFAULT_KD_CONFIG = "configs/shapes_distill.yaml"
DEFAULT_TEACHER_CONFIG = "configs/shapes_teacher.yaml"
DEFAULT_TEACHER_MODEL = "yolo_mt_s"
EVAL_WEIGHTS = ("last", "best")
#: config keys that only the distillation arm may set differently
KD_KEYS = ("teacher", "temperature", "alpha_seg", "alpha_det", "distill")
#: config keys the study sets itself (a key=value override of one is refused)
STUDY_KEYS = ("data", "epochs", "seed", "teacher", "student", "project", "name", "resume", "exist_ok")
#: config keys that may change between sessions of one study (they do not change results)
VOLATILE_KEYS = ("workers", "tensorboard")
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Plan:
    """A validated study. Exactly one of ``teacher`` / ``teacher_epochs`` and one of ``student`` / ``ratio`` /
    ``target_macs``; at least two distinct seeds. Raises ``ConfigError`` (one line) otherwise."""

    out: Path
    data: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None  # None: the configs' epochs
    ft_config: Path = Path(DEFAULT_FT_CONFIG)
    kd_config: Path = Path(DEFAULT_KD_CONFIG)
    overrides: tuple[str, ...] = ()
    teacher: Path | None = None
    teacher_epochs: int | None = None
    teacher_model: str = DEFAULT_TEACHER_MODEL
    teacher_config: Path = Path(DEFAULT_TEACHER_CONFIG)
    student: Path | None = None
    ratio: float | None = None
    target_macs: float | None = None
    eval_weights: str = "last"

    def __post_init__(self) -> None:
        for name in ("out", "data", "ft_config", "kd_config", "teacher", "teacher_config", "student"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, Path(v).absolute())
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        self._validate()

    def _validate(self) -> None:
        if not self.data.is_file():
            raise ConfigError(f"--data: dataset YAML {self.data} not found")
        if (self.teacher is None) == (self.teacher_epochs is None):
            raise ConfigError(
                "--teacher / --teacher-epochs: give exactly one: a teacher checkpoint, or the epochs of a "
                "teacher the study trains"
            )
        if self.teacher is not None and not self.teacher.is_file():
            raise ConfigError(f"--teacher: checkpoint {self.teacher} not found")
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise ConfigError(f"--teacher-epochs: expected an integer >= 1, got {self.teacher_epochs}")
        choices = (("--student", self.student), ("--ratio", self.ratio), ("--target-macs", self.target_macs))
        given = [n for n, v in choices if v is not None]
        if len(given) != 1:
            what = f"got {' and '.join(given)}" if given else "got none"
            raise ConfigError(
                f"student: give exactly one of --student CKPT, --ratio R or --target-macs M ({what})"
            )
        if self.student is not None and not self.student.is_file():
            raise ConfigError(f"--student: checkpoint {self.student} not found")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--ratio: expected a channel pruning ratio in (0, 1), got {self.ratio}")
        if self.target_macs is not None and not self.target_macs > 0:
            raise ConfigError(f"--target-macs: expected a positive number of MACs, got {self.target_macs}")
        if len(self.seeds) < 2:
            raise ConfigError(
                f"--seeds: a study needs at least 2 seeds for an interval, got {len(self.seeds)}"
            )
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"--seed-list: expected distinct non-negative seeds, got {list(self.seeds)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs: expected an integer >= 1, got {self.epochs}")
        if self.eval_weights not in EVAL_WEIGHTS:
            raise ConfigError(
                f"--eval-weights: expected one of {', '.join(EVAL_WEIGHTS)}, got {self.eval_weights!r}"
            )
        for key in parse_overrides(self.overrides):
            if key in STUDY_KEYS:
                flag = {"epochs": "--epochs", "seed": "--seeds/--seed-list", "data": "--data"}.get(
                    key, "the study"
                )
                raise ConfigError(f"override {key}=...: this key is set by {flag}, not by key=value")

    # ------------------------------------------------------------------ paths in the study folder
    @property
    def teacher_run(self) -> Path:
        return self.out / "teacher"

    @property
    def teacher_weights(self) -> Path:
        """The teacher checkpoint the study distils from and prunes (given, or from its own teacher run)."""
        if self.teacher is not None:
            return self.teacher
        return self.teacher_run / "weights" / f"{self.eval_weights}.pt"

    @property
    def student_weights(self) -> Path:
        return self.student if self.student is not None else self.out / "student.pt"

    def metrics_path(self, name: str) -> Path:
        return self.out / "metrics" / f"{name}.json"


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_seed{seed}"


def arm_config(plan: Plan, arm: str, seed: int) -> TrainConfig:
    """The training config of ``arm`` for ``seed``: its config file + overrides, then the study's own keys."""
    path = plan.ft_config if arm == "finetune" else plan.kd_config
    cfg = load_config(path, plan.overrides)
    return cfg.replace(
        data=str(plan.data),
        epochs=plan.epochs or cfg.epochs,
        seed=seed,
        student=str(plan.student_weights),
        teacher=str(plan.teacher_weights) if arm == "distill" else None,
        project=str(plan.out / "runs"),
        name=run_name(arm, seed),
        resume=False,
        exist_ok=False,
    )


def _is_optim_override(item: str) -> bool:
    key = item.partition("=")[0].strip().lstrip("-")
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    return key.split(".")[0] == "optim" or (
        key not in top and key in {f.name for f in dataclasses.fields(OptimConfig)}
    )


def teacher_config(plan: Plan) -> TrainConfig:
    """The config of the teacher the study trains: ``--teacher-config`` with the overrides except the optimizer
    ones (those are the students' fine-tuning recipe), ``--teacher-epochs``, ``--teacher-model``, seed 0."""
    overrides = [o for o in plan.overrides if not _is_optim_override(o)]
    return load_config(plan.teacher_config, overrides).replace(
        data=str(plan.data),
        epochs=plan.teacher_epochs,
        model=plan.teacher_model,
        seed=0,
        teacher=None,
        student=None,
        project=str(plan.out),
        name=plan.teacher_run.name,
        resume=False,
        exist_ok=False,
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_recipe(ft: TrainConfig, kd: TrainConfig, ft_path: Path, kd_path: Path) -> None:
    """Both arms share every config key but the distillation ones (``KD_KEYS``) and the run name; else
    ``ConfigError`` naming the first key that differs."""
    skip = (*KD_KEYS, "name")
    a = flatten({k: v for k, v in ft.to_dict().items() if k not in skip})
    b = flatten({k: v for k, v in kd.to_dict().items() if k not in skip})
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            raise ConfigError(
                f"--ft-config {ft_path.name} and --kd-config {kd_path.name} differ in '{key}' "
                f"({a.get(key, '<default>')!r} vs {b.get(key, '<default>')!r}); both arms must share every "
                f"setting but the distillation ones ({', '.join(KD_KEYS)})"
            )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _recipe(cfg: TrainConfig, drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in (*drop, *VOLATILE_KEYS)}


def settings(plan: Plan, ft: TrainConfig, kd: TrainConfig, teacher_cfg: TrainConfig | None) -> dict[str, Any]:
    """What the study's results depend on (JSON-plain); seeds are not part of it: more seeds may be added later."""
    if plan.teacher is not None:
        teacher: dict[str, Any] = {"checkpoint": str(plan.teacher), "sha256": sha256(plan.teacher)}
    else:
        assert teacher_cfg is not None
        teacher = {"trained": _recipe(teacher_cfg, ("data", "seed", "project", "name", "resume", "exist_ok"))}
    if plan.student is not None:
        student: dict[str, Any] = {"checkpoint": str(plan.student), "sha256": sha256(plan.student)}
    else:
        pruned = {"ratio": plan.ratio, "target_macs": plan.target_macs, "importance": "magnitude"}
        student = {"pruned": {**pruned, "imgsz": ft.imgsz}}
    s = {
        "data": str(plan.data),
        "split": SPLIT,
        "epochs": ft.epochs,
        "eval_weights": plan.eval_weights,
        "teacher": teacher,
        "student": student,
        "finetune": _recipe(ft, STUDY_KEYS),
        "distill": _recipe(kd, STUDY_KEYS),
    }
    return json.loads(json.dumps(s))


def _holds_results(out: Path) -> bool:
    """Whether the folder holds anything that depends on its settings: a checkpoint or a metrics file."""
    return any(out.rglob("*.pt")) or any((out / "metrics").glob("*.json"))


def check_settings(out: Path, current: dict[str, Any]) -> dict[str, Any]:
    """Record ``current`` in a new study folder, or check it against the recorded settings of an existing one.

    A study that has produced nothing yet (no checkpoint, no metrics: e.g. its first command failed at once) takes
    the new settings. Raises ``ConfigError`` (one line, naming the first setting that differs, in the settings'
    order) when the folder holds results made with other settings, or holds files but no study."""
    from mtkd.utils.atomic import write_text

    path = out / SETTINGS_FILE
    if not path.is_file() and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out: {out} is not empty and holds no study ({SETTINGS_FILE}); use an empty or new folder"
        )
    if not path.is_file() or not _holds_results(out):
        write_text(path, json.dumps(current, indent=2), what="study settings")
        return current
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable study settings ({e}); use a new --out") from None
    old, new = flatten(recorded), flatten(current)
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            raise ConfigError(
                f"--out: {out} holds a study run with {key}={old.get(key, '<unset>')!r}, but this command has "
                f"{key}={new.get(key, '<unset>')!r}; repeat the study's settings or use another --out"
            )
    return recorded
