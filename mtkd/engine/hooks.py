"""Trainer hooks (detectron2 ``engine/hooks.py`` style) and the built-in ones, in ``default_hooks()`` order (like
detectron2's ``build_hooks``).

A hook overrides any of ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch``, ``after_train`` and
``close``; ``self.trainer`` is set when the ``Trainer`` is created. ``Trainer.hooks`` is ``default_hooks()``
followed by the hooks given to ``Trainer(cfg, hooks=...)``; every method is called on every hook in that order,
on every rank.

Built-in hooks, in this order (the order is the contract: the checkpoint comes before the evaluation):

1. ``ProgressBar``: tqdm bar over the epoch's batches with the main terms and images/s (rank 0); closed at the
   end of the epoch's steps, before anything else of ``after_epoch``.
2. ``LastCheckpoint``: ``weights/last.pt`` with the epoch's full training state (``eval_pending`` when an
   evaluation is due), then ``results.csv`` rewritten from the rows — a failing or killed evaluation loses no
   training.
3. ``Evaluation``: when due (every ``eval_every`` epochs and the last one): evaluate the EMA (or raw) student on
   the val split → best fitness/epoch and patience count → ``best.pt`` first when the fitness improved →
   ``last.pt`` again (metrics, best, no longer pending) → ``results.csv`` with the metrics. Then every rank waits
   for rank 0's files (barrier).
4. ``EpochLog``: TensorBoard (``step/loss``, ``step/lr`` per step; ``epoch/<column>`` per epoch) and the console
   line ``epoch e/E: loss ..., fitness ..., ETA ...s`` (rank 0).
5. ``EarlyStop``: ``patience`` evaluations without improvement → ``trainer.should_stop`` (the loop ends after
   this epoch's hooks).

then the user's hooks. Per epoch: last.pt (eval pending) + results.csv → evaluation → best.pt → last.pt update +
results.csv → TensorBoard, console → early stop → user hooks. When a resume finds ``last.pt`` marked ``eval_pending`` (the run
was killed during that evaluation) the trainer first re-runs that epoch's ``after_epoch`` with
``trainer.resumed_epoch`` true, only on hooks whose ``on_resumed_epoch`` is true (3, 4, 5): the pending
evaluation, its log line and the early-stop check, without rewriting the ``last.pt`` it resumed from.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mtkd.engine.logger import SHOWN, TensorBoard, metric_columns, postfix
from mtkd.engine.state import write_checkpoint, write_last
from mtkd.utils import dist as D
from mtkd.utils.log import get_logger

log = get_logger(__name__)

if TYPE_CHECKING:
    from mtkd.engine.trainer import Trainer


class HookBase:
    """Base class: every method is a no-op."""

    trainer: Trainer
    #: also run ``after_epoch`` for the epoch whose evaluation a resume re-runs (``trainer.resumed_epoch``)
    on_resumed_epoch = False

    def before_train(self) -> None:
        """After set-up (and resume), before the first epoch."""

    def before_epoch(self) -> None:
        """``trainer.epoch`` (0-based) is about to start (``trainer.step``: batches already done, on resume)."""

    def after_step(self) -> None:
        """After the optimizer step; ``trainer.last_terms`` holds the step's detached loss terms and
        ``trainer.step`` the batches done in this epoch."""

    def after_epoch(self) -> None:
        """End of epoch ``trainer.epoch``; for user hooks: after checkpointing and evaluation (``last.pt``,
        ``best.pt``, ``results.csv`` written). Not called for user hooks for an evaluation that a resume re-runs
        because the run was killed during it."""

    def after_train(self) -> None:
        """After the last epoch (not called when training stops with an error or an interrupt)."""

    def close(self) -> None:
        """Always, once, when ``fit()`` ends (normally, by an error or an interrupt): release files and writers."""


class ProgressBar(HookBase):
    """tqdm progress bar of the epoch (rank 0): ``loss``, the task/KD terms and images/s as postfix."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.t0 = 0.0

    def before_epoch(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self.t0 = time.perf_counter()
        self.bar = tqdm(
            total=t.iters,
            initial=t.step,
            disable=not t.main,
            leave=True,
            desc=f"{t.epoch + 1}/{t.cfg.epochs}",
            dynamic_ncols=True,
        )

    def after_step(self) -> None:
        t = self.trainer
        if t.main:
            rate = t.images_done / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(postfix(t.last_terms, rate, SHOWN))
            self.bar.update(1)

    def after_epoch(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LastCheckpoint(HookBase):
    """``weights/last.pt`` after every epoch (before its evaluation), then ``results.csv``."""

    def after_epoch(self) -> None:
        write_last(self.trainer, self.trainer.epoch + 1)


class Evaluation(HookBase):
    """Evaluation when due, best fitness/epoch, ``best.pt``, the metrics in ``last.pt`` and ``results.csv``.

    Sets ``trainer.epoch_fitness`` (``None`` when this epoch was not evaluated), ``trainer.metrics``,
    ``best_fitness``, ``best_epoch`` and ``bad_evals`` (evaluations since the last improvement).
    """

    on_resumed_epoch = True

    def after_epoch(self) -> None:
        t = self.trainer
        t.epoch_fitness = self.evaluate_epoch(t.epoch) if t.eval_pending else None
        D.barrier()  # rank 0's files of this epoch are written before any rank goes on

    def evaluate(self) -> tuple[dict[str, Any], float]:
        """Metrics of the EMA (or raw) student on the val split and their fitness (higher is better)."""
        t = self.trainer
        model = t.ema.ema if t.ema is not None else t.student
        if t.val_loader is None:
            return {}, 0.0
        from mtkd.eval.evaluate import evaluate_model, fitness

        metrics = evaluate_model(
            model, t.val_loader, spec=t.spec, device=t.device, conf=t.cfg.conf, iou=t.cfg.iou, progress=t.main
        )
        return metrics, float(fitness(metrics))

    def evaluate_epoch(self, epoch: int) -> float:
        """Evaluate after epoch ``epoch`` (0-based) whose ``last.pt`` is written: best.pt first when improved, then
        last.pt and results.csv with the metrics. Returns the fitness."""
        t = self.trainer
        t.metrics, fit = self.evaluate()
        improved = t.best_fitness is None or fit > t.best_fitness
        if improved:
            t.best_fitness, t.best_epoch = fit, epoch + 1
        t.bad_evals = 0 if improved else t.bad_evals + 1
        row = t.rows[-1] if t.rows and int(float(t.rows[-1]["epoch"])) == epoch + 1 else {"epoch": epoch + 1}
        train_part = {k: v for k, v in row.items() if k != "time"}
        t.rows[-1:] = [{**train_part, **metric_columns(t.metrics), "fitness": fit, "time": t.elapsed()}]
        t.eval_pending = False
        if improved:
            write_checkpoint(t, t.run_dir / "weights" / "best.pt", epoch=epoch + 1, best=True)
        write_last(t, epoch + 1)
        return fit


class EpochLog(HookBase):
    """TensorBoard scalars (rank 0, ``tensorboard=true``) and the console line of each epoch with its ETA."""

    on_resumed_epoch = True

    def __init__(self) -> None:
        self.tb: TensorBoard | None = None
        self.t0 = time.perf_counter()
        self.trained = 0  # epochs trained in this session

    def before_train(self) -> None:
        t = self.trainer
        self.tb = TensorBoard(t.run_dir, enabled=t.main and t.cfg.tensorboard)
        self.t0 = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        if t.main:
            self.tb.scalars(
                {"loss": float(t.last_terms["loss"]), "lr": t.lr},
                t.epoch * t.iters + t.step - 1,
                prefix="step/",
            )

    def after_epoch(self) -> None:
        t = self.trainer
        self.trained += not t.resumed_epoch
        if not t.main:
            return
        row = t.rows[-1] if t.rows else {}
        self.tb.scalars(
            {k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
            t.epoch + 1,
            prefix="epoch/",
        )
        eta = (time.perf_counter() - self.t0) / max(self.trained, 1) * (t.cfg.epochs - t.epoch - 1)
        fit = t.epoch_fitness
        log.info(
            f"epoch {t.epoch + 1}/{t.cfg.epochs}: loss {float(row.get('loss', float('nan'))):.4g}"
            + (f", fitness {fit:.4g}" if fit is not None else "")
            + f", ETA {eta:.0f}s"
        )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class EarlyStop(HookBase):
    """Stop after ``patience`` evaluations without a fitness improvement (``patience=0``: never)."""

    on_resumed_epoch = True

    def after_epoch(self) -> None:
        t = self.trainer
        if t.cfg.patience and t.bad_evals >= t.cfg.patience:
            if t.main:
                log.info(f"early stop: no fitness improvement in {t.cfg.patience} evaluations")
            t.should_stop = True


def default_hooks() -> list[HookBase]:
    """The built-in hooks in their order (module docstring)."""
    return [ProgressBar(), LastCheckpoint(), Evaluation(), EpochLog(), EarlyStop()]
