"""Trainer hooks (detectron2 ``HookBase`` style): override any of the five methods; ``self.trainer`` is set
by the trainer before ``before_train``. Hooks run on every rank, in registration order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtkd.engine.trainer import Trainer


class HookBase:
    trainer: Trainer

    def before_train(self) -> None:
        """After set-up (and resume), before the first epoch."""

    def before_epoch(self) -> None:
        """``trainer.epoch`` (0-based) is about to start."""

    def after_step(self) -> None:
        """After the optimizer step; ``trainer.last_terms`` holds the step's detached loss terms."""

    def after_epoch(self) -> None:
        """After checkpointing and evaluation of ``trainer.epoch`` (``last.pt``, ``best.pt``, ``results.csv``
        written). Not called for an evaluation that a resume re-runs because the run was killed during it."""

    def after_train(self) -> None:
        """After the last epoch (not called when training stops with an error or an interrupt)."""
