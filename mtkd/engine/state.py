"""The training state in checkpoints: what ``last.pt`` / ``best.pt`` hold, how they are written, how a resume
restores them (DESIGN.md §4).

Checkpoint dict: ``model`` (deployable weights: the EMA, or the raw student, with its arch), ``names``, ``config``
(the resolved config), ``metrics`` (the last evaluation) and ``train``: ``epoch`` (epochs finished), ``step``
(batches done in the current epoch: non-zero only in an interrupt's ``last.pt``), ``best_fitness``,
``best_epoch``, ``epochs``; in ``last.pt`` also ``model`` (raw student ``state_dict``), ``optimizer``,
``scheduler``, ``scaler``, ``ema`` (``{state_dict, updates}`` or ``None``), the task's fields
(``distill``: the connectors' ``state_dict``, ``{}`` without a teacher), ``rng``, ``meters``, ``world_size``,
``rows`` (the ``results.csv`` rows), ``bad_evals``, ``eval_pending``, ``elapsed``.

Every file goes through ``save_checkpoint`` (atomic: temp file + ``os.replace``), on rank 0 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtkd.checkpoint import checkpoint_dict, save_checkpoint
from mtkd.engine.rng import get_rng_state, set_rng_state
from mtkd.engine.setup import check_train_state
from mtkd.errors import CheckpointError, ConfigError, MtkdError
from mtkd.utils import dist as D
from mtkd.utils.log import get_logger

log = get_logger(__name__)

if TYPE_CHECKING:
    from mtkd.engine.trainer import Trainer


def training_checkpoint(t: Trainer, *, epoch: int, step: int, best: bool = False) -> dict[str, Any]:
    """The checkpoint of trainer ``t`` after ``epoch`` epochs and ``step`` batches: deployable (EMA) weights and,
    unless ``best``, everything needed to resume. Refuses (``MtkdError``) non-finite weights."""
    deploy = t.ema.ema if t.ema is not None else t.student
    for name, w in [*deploy.state_dict().items(), *t.student.state_dict().items()]:
        if w.is_floating_point() and not torch.isfinite(w).all():
            raise MtkdError(
                f"refusing to save a checkpoint with non-finite weights ('{name}'); "
                f"{t.run_dir / 'weights/last.pt'} keeps the last finite state"
            )
    train: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "best_fitness": t.best_fitness,
        "best_epoch": t.best_epoch,
        "epochs": t.cfg.epochs,
    }
    if not best:
        train.update(
            model=t.student.state_dict(),
            optimizer=t.optimizer.state_dict(),
            scheduler=t.scheduler.state_dict(),
            scaler=t.scaler.state_dict(),
            ema=t.ema.state_dict() if t.ema is not None else None,
            **t.task.train_state(),
            rng=get_rng_state(),
            meters=dict(t.meters) if step else {},
            world_size=D.world_size(),
            rows=[dict(r) for r in t.rows],
            bad_evals=t.bad_evals,
            eval_pending=t.eval_pending,
            elapsed=t.elapsed(),
        )
    return checkpoint_dict(
        deploy,
        config=t.cfg.to_dict(),
        metrics=t.metrics,
        train=train,
        names={"det": t.spec.det_names, "seg_tasks": t.spec.seg_tasks},
    )


def write_checkpoint(t: Trainer, path: Path, *, epoch: int, step: int = 0, best: bool = False) -> None:
    """Rank 0: write ``training_checkpoint(t, ...)`` to ``path`` (atomically)."""
    if t.main:
        save_checkpoint(training_checkpoint(t, epoch=epoch, step=step, best=best), path)


def write_last(t: Trainer, epoch: int) -> None:
    """Rank 0: ``weights/last.pt`` (state after ``epoch`` epochs), then ``results.csv`` from the rows."""
    if t.main:
        write_checkpoint(t, t.run_dir / "weights" / "last.pt", epoch=epoch)
        t.csv.replace(t.rows)


# ---------------------------------------------------------------------------------------------- resume
def load_train_state(t: Trainer, ckpt: dict[str, Any], path: Path) -> None:
    """Restore the training state of ``ckpt`` (read from ``path``) into trainer ``t``; every field is checked, and
    a field that does not fit this run raises a one-line ``CheckpointError`` naming the file and the field."""
    from mtkd.models.build import load_state_strict

    st = check_train_state(ckpt, path)  # types of the scalar fields

    def guard(field: str, fn: Any) -> Any:
        try:
            return fn()
        except CheckpointError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            RuntimeError,
            IndexError,
            AttributeError,
            AssertionError,
        ) as e:
            raise CheckpointError(
                f"{path}: field 'train.{field}' does not fit this run ({_one_line(e)})"
            ) from None

    world = st.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise CheckpointError(f"{path}: field 'train.world_size' must be a positive int, got {world!r}")
    if st["step"] and world != D.world_size():
        raise ConfigError(
            f"resume: the run was interrupted mid-epoch with {world} DDP ranks; "
            f"resume it with the same number of ranks (now {D.world_size()})"
        )
    if st["step"] > t.iters:
        raise CheckpointError(
            f"{path}: field 'train.step' is {st['step']} but an epoch has {t.iters} "
            f"batches now (did the data or batch change?)"
        )
    guard("model", lambda: load_state_strict(t.student, st["model"], where=f"{path}: field 'train.model'"))
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in t.optimizer.param_groups]
    guard("optimizer", lambda: t.optimizer.load_state_dict(st["optimizer"]))
    _check_optimizer(t.optimizer, fresh, f"{path}: field 'train.optimizer'")
    sched = st["scheduler"]
    if isinstance(sched.get("last_epoch"), bool) or not isinstance(sched.get("last_epoch"), int):
        raise CheckpointError(
            f"{path}: field 'train.scheduler.last_epoch' must be an int, got {sched.get('last_epoch')!r}"
        )
    guard("scheduler", lambda: t.scheduler.load_state_dict(dict(sched)))
    guard("scaler", lambda: t.scaler.load_state_dict(dict(st["scaler"])))
    if t.ema is not None:
        ema = st.get("ema")
        if (
            not isinstance(ema, dict)
            or not isinstance(ema.get("state_dict"), dict)
            or isinstance(ema.get("updates"), bool)
            or not isinstance(ema.get("updates"), int)
        ):
            raise CheckpointError(
                f"{path}: field 'train.ema' must be a dict with 'state_dict' and 'updates' (int) for ema=true"
            )
        guard(
            "ema", lambda: load_state_strict(t.ema.ema, ema["state_dict"], where=f"{path}: field 'train.ema'")
        )
        t.ema.updates = ema["updates"]
    for name in t.task.train_state():  # the task's own fields (the connectors: 'distill')
        guard(
            name,
            lambda name=name: t.task.load_train_state_field(
                name, st.get(name), where=f"{path}: field 'train.{name}'"
            ),
        )
    now = get_rng_state()  # check the RNG state by setting it, then put the current one back
    try:
        guard("rng", lambda: set_rng_state(st["rng"]))
    finally:
        set_rng_state(now)
    t.meters = guard("meters", lambda: {str(k): float(v) for k, v in (st.get("meters") or {}).items()})
    t.epoch, t.step = st["epoch"], st["step"]
    t.best_fitness = None if st.get("best_fitness") is None else float(st["best_fitness"])
    t.best_epoch = st.get("best_epoch")
    metrics = ckpt.get("metrics")
    t.metrics = dict(metrics) if isinstance(metrics, dict) else {}
    if t.best_epoch is None and t.best_fitness is not None and t.metrics and not st["step"]:
        from mtkd.eval.evaluate import fitness  # a last.pt from before best_epoch was kept

        if guard("metrics", lambda: fitness(t.metrics)) == t.best_fitness:
            t.best_epoch = t.epoch
    t.bad_evals = int(st.get("bad_evals") or 0)
    t.eval_pending = bool(st.get("eval_pending", False))
    t.rows = guard("rows", lambda: [{str(k): v for k, v in r.items()} for r in st.get("rows", [])])
    t.elapsed0 = guard("elapsed", lambda: float(st.get("elapsed", 0.0)))
    t.resume_rng = st["rng"]


def restore_results(t: Trainer, st: dict[str, Any]) -> None:
    """Rank 0, on resume: results.csv = the rows kept in last.pt (rows of finished epochs survive a kill before the
    CSV write); then re-create a missing best.pt when the best epoch is the resumed one, else say it is lost."""
    if "rows" in st:
        t.csv.replace(t.rows)
    else:  # a last.pt from before the rows were kept: trust the CSV up to the resumed epoch
        t.csv.truncate(t.epoch)
        t.rows = [dict(r) for r in t.csv.rows]
    best = t.run_dir / "weights" / "best.pt"
    if t.best_fitness is None or best.is_file():
        return
    if t.best_epoch == t.epoch and t.step == 0 and not t.eval_pending:
        write_checkpoint(t, best, epoch=t.epoch, best=True)
        log.info(f"re-created {best} (best epoch {t.best_epoch}) from the resumed checkpoint")
        return
    log.warning(
        f"{best} is missing and its weights (epoch {t.best_epoch or '?'}) cannot be re-created; "
        f"the next evaluation writes a new best.pt"
    )
    t.best_fitness = t.best_epoch = None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_optimizer(opt: torch.optim.Optimizer, fresh: list[dict[str, Any]], where: str) -> None:
    """After ``load_state_dict``: hyper-parameters keep their types and every state tensor fits its parameter
    (``load_state_dict`` checks only the group sizes; a mismatch would fail at the next step, deep in torch)."""
    for i, (group, want) in enumerate(zip(opt.param_groups, fresh)):
        for k, v in want.items():
            if k not in group:  # a key this torch version adds: load_state_dict/__setstate__ fill it
                continue
            got = group[k]
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = (
                isinstance(got, (int, float, Tensor)) and not isinstance(got, bool)
                if number
                else isinstance(got, (tuple, list)) and len(got) == len(v)
                if isinstance(v, (tuple, list))
                else type(got) is type(v)
                if isinstance(v, bool)
                else True
            )
            if not ok:
                raise CheckpointError(
                    f"{where}: param_groups[{i}].{k} is {got!r}, expected a value like {v!r}"
                )
        for j, p in enumerate(group["params"]):
            for k, v in opt.state.get(p, {}).items():
                if k == "step":
                    if not isinstance(v, (int, float, Tensor)) or (isinstance(v, Tensor) and v.numel() != 1):
                        raise CheckpointError(
                            f"{where}: state of param_groups[{i}] parameter {j}: 'step' is not a number"
                        )
                elif v is not None and (not isinstance(v, Tensor) or tuple(v.shape) != tuple(p.shape)):
                    shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise CheckpointError(
                        f"{where}: state '{k}' of param_groups[{i}] parameter {j} is {shape}, its "
                        f"parameter has shape {tuple(p.shape)}"
                    )
