"""The training loop: one loop for plain and distilled training (``Trainer(cfg).fit()``).

The trainer keeps the loop, resume and interrupts; what a step computes is the task (``mtkd.engine.task``:
``TrainTask`` or ``DistillTask``, the module DDP wraps), and checkpointing, evaluation, logging and early stop are
hooks (``mtkd.engine.hooks``, whose docstring gives their order).

Per step (``run_step``): batch to the device (once, ``non_blocking``; the loaders pin memory on CUDA) →
``task(batch, progress)`` under autocast → every term copied to the host at once and checked finite (on all
ranks: the step's one host sync) → backward (``GradScaler`` for fp16) → gradient clipping → optimizer step →
per-iteration LR schedule → in-place EMA update of the student. The terms the step returns, the meters and
the hooks' ``last_terms`` are those host (CPU) copies, so logging costs no further device sync. Options:
``channels_last`` (weights and images), ``compile`` (``torch.compile`` of the models' forwards). Per epoch:
the mean of every term over the epoch's steps, reduced over DDP ranks, becomes the epoch's ``results.csv`` row
(kept in the training state), then the hooks' ``after_epoch``.

A resume (``mtkd.engine.state.load_train_state``) restores every piece of state, rewrites ``results.csv`` from the
rows in ``last.pt``, re-creates a missing ``best.pt`` when the best epoch is the resumed one, and re-runs a
pending evaluation before the next epoch. The run folder is locked (``mtkd.engine.setup.RunLock``) from set-up to
the end of ``fit()``; temp files a killed run left are removed then.

Reproducibility (CPU, fixed seed): epoch ``e`` seeds torch/NumPy/``random`` with ``seed + e`` and calls the
loader's ``set_epoch(e)`` (shuffling and augmentation are functions of ``(seed, epoch, index)``), and the
checkpoint stores every piece of state (raw and EMA weights, the task's state, optimizer, scheduler, scaler, RNG),
so a resumed run ends with bitwise the weights of an uninterrupted one. Deterministic algorithms are not
forced (``torch.use_deterministic_algorithms``): CPU kernels are deterministic for a fixed thread count;
CUDA runs are reproducible only up to kernel non-determinism.

Interrupts: the first Ctrl-C (SIGINT) asks the loop to stop after the current step (``fit()`` installs its
handler only where SIGINT is not ignored, e.g. not under ``nohup``/a background job, and restores the previous
handler when it returns); it then writes ``weights/last.pt`` with the exact mid-epoch state (``train.step`` =
batches done), and ``resume=true`` skips those batches of that epoch and continues bitwise-identically. A second
Ctrl-C aborts at once (``last.pt`` then holds the previous end-of-epoch or interrupt state). A non-finite loss term
stops the run with ``MtkdError`` naming the epoch, step and term; nothing is saved from that step on, so
``last.pt`` keeps finite weights.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from mtkd.config import TrainConfig
from mtkd.data.collate import batch_to_device
from mtkd.engine.ema import ModelEMA
from mtkd.engine.hooks import HookBase, default_hooks
from mtkd.engine.logger import SHOWN, ResultsCSV, metric_columns
from mtkd.engine.optim import build_optimizer, build_scheduler
from mtkd.engine.rng import seed_all, set_rng_state
from mtkd.engine.setup import RunLock, clean_stale_temps, planned_run_dir, prepare_run_dir, resolve_resume
from mtkd.engine.state import load_train_state, restore_results, write_checkpoint
from mtkd.engine.task import build_student, build_task, check_compile, check_seg_task_options, compile_task
from mtkd.errors import ConfigError, MtkdError
from mtkd.utils import dist as D
from mtkd.utils.atomic import write_text
from mtkd.utils.env import frozen_gc_heap
from mtkd.utils.log import get_logger

log = get_logger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a Ctrl-C once the resumable checkpoint is written; ``str()`` is the one-line message."""


class Trainer:
    """Train a student (optionally distilled from ``cfg.teacher``) as described by a ``TrainConfig``.

    Args:
        cfg: the validated config (``mtkd.config.load_config``).
        hooks: extra ``HookBase`` objects, run after the built-in ones (``mtkd.engine.hooks``), in order.

    After ``fit()``: ``run_dir`` holds ``config.yaml``, ``results.csv``, ``weights/last.pt`` and
    ``weights/best.pt``; ``best_fitness``/``best_epoch`` and ``metrics`` hold the best score and the last
    evaluation, ``rows`` the ``results.csv`` rows. During ``fit()`` (from ``setup()`` on) rank 0 holds the run
    folder's lock (``{run_dir}/.lock``); it is released, and the lock file removed, when ``fit()`` returns.
    """

    def __init__(self, cfg: TrainConfig, *, hooks: Sequence[HookBase] = ()) -> None:
        self.cfg = cfg
        self.hooks = [*default_hooks(), *hooks]
        for h in self.hooks:
            h.trainer = self
        self.epoch = 0
        self.step = 0  # batches done in the current epoch
        self.best_fitness: float | None = None
        self.best_epoch: int | None = None  # 1-based epoch of best.pt
        self.bad_evals = 0  # evaluations since the last improvement (patience)
        self.eval_pending = False  # last.pt holds a finished epoch whose evaluation has not run yet
        self.epoch_fitness: float | None = None  # fitness of this epoch's evaluation (None: not evaluated)
        self.resumed_epoch = False  # during the re-run of a pending evaluation after a resume
        self.should_stop = False  # set by a hook (early stop): end after this epoch
        self.rows: list[dict[str, Any]] = []  # results.csv rows, also kept in last.pt
        self.metrics: dict[str, Any] = {}
        self.meters: dict[str, float] = {}
        self.last_terms: dict[str, Tensor] = {}
        self.images_done = 0  # images of this epoch trained in this session, all ranks
        self.elapsed0 = 0.0  # training time of earlier sessions (resume)
        self.resume_rng = None
        self._stop = False  # Ctrl-C
        self._lock: RunLock | None = None
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build everything: data, student, task (``mtkd.engine.task``), optimizer, EMA; restore on resume.

        Rank 0 locks the run folder first (``RunLock``: a second run into it is refused) and removes temp files a
        killed run left there; nothing in the folder is written until every input has been validated. On failure
        the lock is released again.
        """
        try:
            self._setup()
        except BaseException:
            self._release_lock()
            raise

    def _on_rank0(self, fn: Any) -> None:
        """Run ``fn`` on rank 0 only; an ``MtkdError`` it raises is raised on every rank (no rank is left waiting)."""
        err = None
        if self.main:
            try:
                fn()
            except MtkdError as e:
                err = e
        if D.is_dist():
            err = D.broadcast_object(err)
        if err is not None:
            raise err

    def _take_run_dir(self, run_dir: Path) -> None:
        self._lock = RunLock.acquire(run_dir)
        removed = clean_stale_temps(run_dir)
        if removed:
            log.info(f"removed {len(removed)} temp file(s) an interrupted run left in {run_dir}")

    def _setup(self) -> None:
        from mtkd.data.build import build_dataloader
        from mtkd.data.descriptor import load_data_yaml

        self.device = D.init_distributed(self.cfg.device)
        self.main = D.is_main()
        planned = planned_run_dir(self.cfg)  # refuses a name that leaves project
        resume_path = (
            Path(self.cfg.resume) if isinstance(self.cfg.resume, str) else planned / "weights" / "last.pt"
        )
        self._on_rank0(lambda: self._take_run_dir(planned))
        cfg, ckpt, self.run_dir = resolve_resume(self.cfg)
        self.cfg = cfg
        resuming = ckpt is not None
        if cfg.compile:
            check_compile(self.device)
        # fail fast, before anything is built
        self._on_rank0(lambda: prepare_run_dir(cfg, self.run_dir, resuming=resuming, create=False))
        world = D.world_size()
        if cfg.batch % world:
            raise ConfigError(f"batch: {cfg.batch} is not divisible by the {world} DDP ranks")
        seed_all(cfg.seed)
        self.spec = load_data_yaml(cfg.data)
        check_seg_task_options(cfg, self.spec)
        pin = self.device.type == "cuda"  # page-locked batches: asynchronous (non_blocking) copies to the GPU
        self.train_loader = build_dataloader(
            self.spec,
            self.spec.require_split("train"),
            imgsz=cfg.imgsz,
            batch=cfg.batch // world,
            workers=cfg.workers,
            augment=cfg.augment,
            shuffle=True,
            seed=cfg.seed,
            distributed=D.is_dist(),
            params=cfg.aug,
            pin_memory=pin,
        )
        self.val_loader = None
        if "val" in self.spec.splits:
            self.val_loader = build_dataloader(
                self.spec,
                "val",
                imgsz=cfg.imgsz,
                batch=2 * max(cfg.batch // world, 1),  # as Ultralytics: no activations kept, twice the batch
                workers=cfg.workers,
                augment=False,
                shuffle=False,
                seed=cfg.seed,
                distributed=D.is_dist(),
                pin_memory=pin,
                ground_truth=True,  # the workers hand the original-resolution annotations to evaluation
                prime_next=True,  # the next evaluation's first batches are read during the training epoch
                cache=cfg.val_cache,  # every evaluation after the first only collates (mtkd.data.item_cache)
            )
        self.iters = len(self.train_loader)
        if self.iters == 0:
            raise ConfigError(f"data: the train split of {cfg.data} yields no batches")

        student = build_student(cfg, self.spec, ckpt["model"]["arch"] if ckpt else None).to(self.device)
        # the task: the module DDP wraps and whose parameters, in order, the optimizer gets (mtkd.engine.task)
        self.task = build_task(cfg, self.spec, student, self.device)
        self.ema = ModelEMA(student, decay=cfg.ema_decay, tau=cfg.ema_tau) if cfg.ema else None
        if cfg.compile:  # the models' forwards, in place, after the EMA's copy
            compile_task(self.task, self.device)
        self.model = D.wrap_ddp(self.task, self.device)  # what DDP wraps: the task
        self.optimizer = build_optimizer([self.task], cfg.optim)  # parameters in the task's order
        self.scheduler = build_scheduler(
            self.optimizer, cfg.optim, iters_per_epoch=self.iters, epochs=cfg.epochs
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        if ckpt is not None:  # validated in full before anything in the run dir is written
            load_train_state(self, ckpt, resume_path)
        self.csv = None
        if self.main:  # everything above validated: now touch the run dir
            prepare_run_dir(cfg, self.run_dir, resuming=resuming, create=True)
            write_text(
                self.run_dir / "config.yaml",  # re-runnable as is
                yaml.safe_dump(cfg.replace(resume=False).to_dict(), sort_keys=False),
                what="config",
            )
            self.csv = ResultsCSV(self.run_dir / "results.csv", rows=None if resuming else [])
            if resuming:
                restore_results(self, ckpt["train"])
        D.barrier()

    @property
    def student(self) -> nn.Module:
        """The model being trained (unwrapped)."""
        return self.task.student

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def elapsed(self) -> float:
        """Training time of this run so far, earlier sessions included (seconds)."""
        return self.elapsed0 + time.perf_counter() - self._t_start

    # ------------------------------------------------------------------ the step
    def run_step(
        self, batch: dict[str, Any], epoch: int, i: int, task: nn.Module | None = None
    ) -> dict[str, Tensor]:
        """One optimization step of ``task`` (default: the trainer's, DDP-wrapped when distributed) on ``batch``
        (step ``i`` of epoch ``epoch``); returns every loss term (detached 0-d float32 tensors on the CPU)."""
        cfg = self.cfg
        batch = self.to_device(batch)
        g = epoch * self.iters + i
        dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=cfg.amp != "off"):
            terms = (task or self.model)(batch, g / (cfg.epochs * self.iters))
        host = self._host_terms(terms, epoch, i, g)  # the step's one host sync; raises on a non-finite term
        self.backward(terms["loss"])
        self.optimizer_step()
        if self.ema is not None:
            self.ema.update(self.student)
        return host

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors on the device, each moved once (``non_blocking``: asynchronous from pinned memory),
        images float32 in [0, 1] (``channels_last`` when ``cfg.channels_last``) and masks int64 there
        (``mtkd.data.collate.batch_to_device``)."""
        return batch_to_device(batch, self.device, channels_last=self.cfg.channels_last)

    def backward(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> None:
        """Gradient clipping, the (scaled) optimizer step and the per-iteration LR schedule."""
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _host_terms(self, terms: dict[str, Tensor], epoch: int, i: int, g: int) -> dict[str, Tensor]:
        """Every term as a 0-d float32 CPU tensor, copied in one transfer together with the any-rank non-finite
        flag (reduced on the device under DDP); ``MtkdError`` naming the epoch, step and term when a term is not
        finite on this rank or any other."""
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        flag = (~torch.isfinite(values)).any().reshape(1).to(values.dtype)
        if D.is_dist():
            flag = D.all_reduce_mean(flag)  # > 0 on every rank when any rank has a non-finite term
        host = torch.cat([values, flag]).cpu()
        out = dict(zip(terms, host[:-1].unbind()))
        if not host[-1] > 0:
            return out
        where = f"epoch {epoch + 1} step {i + 1} (global {g + 1})"
        names = [k for k, v in out.items() if not torch.isfinite(v)]
        if not names:
            raise MtkdError(
                f"non-finite loss at {where} on another rank; stopping, weights/last.pt is unchanged"
            )
        name = next((k for k in names if k != "loss"), names[0])
        raise MtkdError(
            f"non-finite loss at {where}: term '{name}' = {out[name].item()}; stopping, "
            f"weights/last.pt keeps the last finite state (lower lr, check the data, or amp=off)"
        )

    # ------------------------------------------------------------------ epochs
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """The epoch's steps (from ``self.step`` on, after a mid-epoch resume); returns the mean of every term over
        the epoch, averaged over DDP ranks (``SHOWN`` terms first, then the others by name)."""
        skip = self.step
        seed_all(self.cfg.seed + epoch)
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        elif hasattr(getattr(self.train_loader, "sampler", None), "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        self.task.train()
        if skip == 0:
            self.meters = {}
        self.images_done = 0
        it = iter(self.train_loader)
        for i in range(self.iters):
            try:
                batch = next(it)
            except RuntimeError:
                if self._stop:  # DataLoader workers die on Ctrl-C: stop at the last finished step
                    break
                raise
            if i < skip:
                continue
            if i == skip and self.resume_rng is not None:
                if skip > 0:  # mid-epoch resume: continue the interrupted RNG stream
                    set_rng_state(self.resume_rng)
                self.resume_rng = None  # epoch-boundary resume: the per-epoch seed above is the state
            terms = self.run_step(batch, epoch, i)
            self.step = i + 1
            self.last_terms = terms  # CPU tensors: reading them costs no device sync
            for k, v in terms.items():
                self.meters[k] = self.meters.get(k, 0.0) + float(v)
            self.meters["_n"] = self.meters.get("_n", 0.0) + 1
            self.images_done += len(batch["images"]) * D.world_size()
            for h in self.hooks:
                h.after_step()
            if D.any_rank(self._stop, self.device):
                self._stop = True
                break
        if self._stop:
            self._interrupt(epoch)
        n = self.meters.get("_n", 1.0)
        means = {k: v / n for k, v in self.meters.items() if k != "_n"}
        keys = [k for k in SHOWN if k in means] + sorted(k for k in means if k not in SHOWN)
        reduced = D.all_reduce_mean(torch.tensor([means[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, reduced.tolist()))

    def _interrupt(self, epoch: int) -> None:
        path = self.run_dir / "weights" / "last.pt"
        write_checkpoint(self, path, epoch=epoch, step=self.step)
        D.barrier()
        raise TrainingInterrupted(
            f"interrupted at epoch {epoch + 1} step {self.step}/{self.iters}; resumable "
            f"checkpoint {path} (continue with resume=true)"
        )

    def _end_epoch(self) -> None:
        """The hooks' ``after_epoch`` (on a resumed pending evaluation only those that run there)."""
        for h in self.hooks:
            if not self.resumed_epoch or h.on_resumed_epoch:
                h.after_epoch()

    def _loop(self) -> None:
        cfg = self.cfg
        self._t_start = time.perf_counter()
        start = self.epoch
        if self.eval_pending:  # resumed from a last.pt written before its epoch's evaluation: run it now
            self.epoch, self.resumed_epoch = start - 1, True
            self._end_epoch()
            self.resumed_epoch = False
            if self.should_stop:
                return
        for epoch in range(start, cfg.epochs):
            self.epoch = epoch
            for h in self.hooks:
                h.before_epoch()
            train_means = self.train_one_epoch(epoch)
            self.step = 0
            self.eval_pending = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            row = {"epoch": epoch + 1, **train_means, "lr": self.lr}
            if not self.eval_pending:  # no evaluation this epoch: the row repeats the last one's metrics
                row.update(metric_columns(self.metrics))
            self.rows.append({**row, "time": self.elapsed()})
            self._end_epoch()
            if self.should_stop:
                break

    # ------------------------------------------------------------------ main loop
    def fit(self) -> Path:
        """Train to ``cfg.epochs``; returns the run dir. Ctrl-C → ``TrainingInterrupted`` after saving.

        The Ctrl-C handler is installed only when SIGINT is handled (not ignored: ``nohup``, a background job) and
        the previous handler is put back on return; the run-folder lock is released on return.
        """
        self._pid = os.getpid()
        installed, previous = False, None
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN and previous is not None:  # None: a handler not set from Python
                signal.signal(signal.SIGINT, self._on_sigint)
                installed = True
        try:
            self.setup()
            with frozen_gc_heap():  # the models, loaders and imports: out of the collector's full passes
                for h in self.hooks:
                    h.before_train()
                self._loop()
                for h in self.hooks:
                    h.after_train()
            return self.run_dir
        finally:
            if installed:
                signal.signal(signal.SIGINT, previous)
            for h in self.hooks:
                h.close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: ignore, the main process winds down
            return
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        if D.is_main():
            log.info(
                "\nCtrl-C: stopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)"
            )
