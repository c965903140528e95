"""Trainer set-up: run dir (name check, lock, existing-run check), resume resolution and validation (the models
and the task are built by ``mtkd.engine.task``).

Run folder ``{project}/{name}/`` (DESIGN.md §4): ``config.yaml``, ``results.csv``, ``weights/last.pt``,
``weights/best.pt``, TensorBoard event files, and ``.lock`` while a run owns it. ``RunLock`` holds an exclusive
``fcntl.flock`` on ``.lock`` for the run's lifetime (rank 0 only under DDP): a second run into the same folder is
refused at once, and since the kernel drops the lock when its process dies, a kill -9 leaves no stale lock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtkd.config import TrainConfig, build_config
from mtkd.errors import CheckpointError, ConfigError, OutputError
from mtkd.utils.atomic import describe_os_error, remove_stale_temps

#: keys that may differ between a resumed run's saved config and the command that resumes it
RESUME_MUTABLE = (
    "resume",
    "device",
    "workers",
    "epochs",
    "exist_ok",
    "tensorboard",
    "project",
    "name",
    "trust_code",
)

#: the files of a run, relative to its folder (a fresh ``exist_ok=true`` run replaces them)
RUN_FILES = ("config.yaml", "results.csv", "weights/last.pt", "weights/best.pt")
LOCK_NAME = ".lock"


def check_run_name(cfg: TrainConfig) -> None:
    """``name`` must name a folder inside ``project``: not empty, not absolute, no ``..`` that climbs out."""
    name = str(cfg.name)
    parts = Path(os.path.normpath(name)).parts if name.strip() else ()
    if not parts or os.path.isabs(name) or parts == (".",) or parts[0] == "..":
        raise ConfigError(
            f"name: {name!r} is not a run folder inside project ({cfg.project}); expected a plain "
            f"folder name such as 'exp1' (no absolute path, no '..')"
        )


def planned_run_dir(cfg: TrainConfig) -> Path:
    """The run folder a config trains into: ``{project}/{name}``, or ``PATH/../..`` for ``resume=PATH``."""
    check_run_name(cfg)
    if isinstance(cfg.resume, str):
        return Path(cfg.resume).parent.parent
    return cfg.run_dir


class RunLock:
    """Exclusive, non-blocking ``flock`` on ``{run_dir}/.lock``, held until ``release()`` or process death.

    ``acquire`` creates the run folder (and ``project``) when missing; ``release`` deletes the lock file and the
    folders it created when they are still empty. Raises ``ConfigError`` naming the folder when another run holds
    it, ``OutputError`` when the folder cannot be created or written.
    """

    def __init__(self, run_dir: Path, fd: int | None, created: list[Path]) -> None:
        self.run_dir, self.path, self._fd, self._created = run_dir, run_dir / LOCK_NAME, fd, created

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunLock:
        run_dir = Path(run_dir)
        created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(
                f"{run_dir}: the run folder is an existing file; choose another project= or name="
            )
        cls._mkdir(run_dir)
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run unlocked
            return cls(run_dir, None, created)
        path = run_dir / LOCK_NAME
        for _ in range(100):  # retry while a releasing run deletes the file (or the empty folder) we opened
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                cls._mkdir(run_dir)
                continue
            except OSError as e:
                raise OutputError(
                    f"{run_dir}: cannot write into the run folder ({describe_os_error(e)}); choose a "
                    f"writable project="
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(
                    f"name: run folder {run_dir} is in use by another training run (it holds "
                    f"{path}); wait for that run to end, or choose another name="
                ) from None
            except OSError as e:
                os.close(fd)
                raise OutputError(f"{path}: cannot lock the run folder ({describe_os_error(e)})") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(run_dir, fd, created)
            os.close(fd)
        raise OutputError(f"{path}: cannot take the run lock (the lock file keeps being replaced)")

    @staticmethod
    def _mkdir(run_dir: Path) -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"{run_dir}: cannot create the run folder ({describe_os_error(e)}); choose a writable "
                f"project="
            ) from None

    def release(self) -> None:
        """Unlock (idempotent); remove the lock file, then the folders ``acquire`` created if they are empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter re-checks the inode
        except OSError:
            pass
        os.close(fd)
        for p in self._created:
            try:
                p.rmdir()
            except OSError:
                break

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def clean_stale_temps(run_dir: Path) -> list[Path]:
    """Remove temp files a killed run left in ``run_dir`` and ``run_dir/weights`` (call only under the lock)."""
    return remove_stale_temps(run_dir) + remove_stale_temps(run_dir / "weights")


def _int_field(st: Mapping[str, Any], key: str, path: Path) -> int:
    v = st.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise CheckpointError(
            f"{path}: field 'train.{key}' must be a non-negative int, got {type(v).__name__} {v!r}"
        )
    return v


def check_train_state(ckpt: Mapping[str, Any], path: Path, full: bool = True) -> dict[str, Any]:
    """The ``train`` section of a resumable checkpoint, its scalar fields type-checked (only ``epoch`` unless
    ``full``: ``resolve_resume`` needs no more before the model is rebuilt).

    Raises ``ConfigError`` when there is no training state (best.pt, an exported model) and ``CheckpointError``
    naming the file and field when a field has the wrong type. Tensor states are checked when loaded
    (``mtkd.engine.state.load_train_state``).
    """
    st = ckpt.get("train")
    if not isinstance(st, Mapping) or "optimizer" not in st:
        raise ConfigError(f"resume: {path} has no training state (is it a best.pt or an exported model?)")
    _int_field(st, "epoch", path)
    if not full:
        return dict(st)
    _int_field(st, "step", path)
    for key, kind in (
        ("model", Mapping),
        ("optimizer", Mapping),
        ("scheduler", Mapping),
        ("scaler", Mapping),
        ("rng", Mapping),
    ):
        if not isinstance(st.get(key), kind):
            raise CheckpointError(
                f"{path}: field 'train.{key}' must be a dict, got {type(st.get(key)).__name__}"
            )
    bf = st.get("best_fitness")
    if bf is not None and (isinstance(bf, bool) or not isinstance(bf, (int, float))):
        raise CheckpointError(f"{path}: field 'train.best_fitness' must be a number or None, got {bf!r}")
    for key in ("best_epoch", "bad_evals"):
        if st.get(key) is not None:
            _int_field(st, key, path)
    rows = st.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise CheckpointError(f"{path}: field 'train.rows' must be a list of dicts (results.csv rows)")
    return dict(st)


def resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None, Path]:
    """``(config to train with, checkpoint to resume or None, run dir)``.

    ``resume=true`` continues ``{project}/{name}/weights/last.pt``; ``resume=PATH`` continues that file (its run
    dir is ``PATH/../..``). The saved config is used; the command's config may differ from it only in
    ``RESUME_MUTABLE`` keys (``epochs`` extends or shortens the run), otherwise ``ConfigError`` names the key.
    A malformed training state raises ``CheckpointError`` naming the file and the field.
    """
    if cfg.resume is False:
        return cfg, None, planned_run_dir(cfg)
    from mtkd.checkpoint import load_checkpoint

    path = cfg.run_dir / "weights" / "last.pt" if cfg.resume is True else Path(cfg.resume)
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint to resume at {path} (train without resume=true first)")
    ckpt = load_checkpoint(path)
    st = check_train_state(ckpt, path, full=False)
    if not isinstance(ckpt.get("config"), Mapping):
        raise CheckpointError(
            f"{path}: field 'config' must be the run's config dict, got {type(ckpt.get('config')).__name__}"
        )
    try:
        saved = build_config(ckpt["config"])
    except ConfigError as e:
        raise ConfigError(f"resume: {path}: saved config is invalid: {e}") from None
    new, old = cfg.to_dict(), saved.to_dict()
    for k in new:
        if k not in RESUME_MUTABLE and new[k] != old[k]:
            raise ConfigError(
                f"resume: '{k}' is {new[k]!r} but the run being resumed used {old[k]!r}; resume keeps "
                f"the saved config (only {', '.join(RESUME_MUTABLE[1:5])} may change) — start a new run "
                f"with another name= to change it"
            )
    run_dir = path.parent.parent
    merged = saved.replace(
        **{k: new[k] for k in ("device", "workers", "epochs", "tensorboard", "resume", "trust_code")},
        project=str(run_dir.parent),
        name=run_dir.name,
    )
    done = st["epoch"]
    if done > merged.epochs or (done == merged.epochs and not st.get("eval_pending")):
        raise ConfigError(
            f"resume: {path} already finished {done} of epochs={merged.epochs}; "
            f"pass epochs=N (N > {done}) to train longer"
        )
    return merged, ckpt, run_dir


def _run_contents(run_dir: Path) -> list[str]:
    """Files under ``run_dir`` (relative, sorted), the lock file left out."""
    if not run_dir.is_dir():
        return []
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if not p.is_dir() and p.relative_to(run_dir) != Path(LOCK_NAME)
    )


def prepare_run_dir(cfg: TrainConfig, run_dir: Path, resuming: bool, create: bool = True) -> None:
    """Refuse to overwrite a run folder unless ``exist_ok`` or resuming; with ``create`` make ``run_dir/weights``
    and, for a fresh run, drop the previous run's files (``RUN_FILES``).

    Call it on rank 0 under the ``RunLock``. A folder that does not exist or is empty (the lock aside) is fine;
    one that holds ``weights/last.pt`` or any other file is refused with a ``ConfigError`` naming the folder.
    """
    if not resuming and not cfg.exist_ok:
        if (run_dir / "weights" / "last.pt").exists():
            raise ConfigError(
                f"name: run dir {run_dir} already holds a run; pass resume=true to continue it, "
                f"exist_ok=true to overwrite it, or another name="
            )
        found = _run_contents(run_dir)
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise ConfigError(
                f"name: run dir {run_dir} is not empty ({shown}) and has no weights/last.pt to "
                f"resume; pass exist_ok=true to overwrite it, or another name="
            )
    if not create:
        return
    try:
        (run_dir / "weights").mkdir(parents=True, exist_ok=True)
        if not resuming:
            for stale in RUN_FILES:
                (run_dir / stale).unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{run_dir}: cannot prepare the run folder ({describe_os_error(e)})") from None
