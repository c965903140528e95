"""The training loop: one loop for plain and distilled training (``Trainer(cfg).fit()``).

Per step (``run_step``): batch → student forward (with feature taps when feature KD is on) → teacher forward
(frozen, eval mode, ``torch.no_grad``) → ``TaskLoss`` → ``DistillLoss`` (or ``plain_loss``) → every term
checked finite → backward (``GradScaler`` for fp16) → gradient clipping → optimizer step → per-iteration LR
schedule → EMA update. End of an epoch (files written by rank 0, each atomically):

1. mean of every term (reduced over DDP ranks) → the epoch's ``results.csv`` row, kept in the training state;
2. ``weights/last.pt`` with the epoch's full training state (marked ``eval_pending`` when an evaluation is due),
   then ``results.csv`` rewritten from the rows — so a failing or killed evaluation loses no training;
3. when due (every ``eval_every`` epochs and the last one): evaluation (``mtkd.eval.evaluate``) → ``best.pt``
   first when the fitness improved → ``last.pt`` again (metrics, best fitness/epoch, no longer pending) →
   ``results.csv`` with the metrics;
4. TensorBoard, the console line, hooks' ``after_epoch``, early stopping.

A resume re-runs a pending evaluation before the next epoch, rewrites ``results.csv`` from the rows in
``last.pt`` and re-creates a missing ``best.pt`` when the best epoch is the resumed one. The run folder is locked
(``mtkd.engine.setup.RunLock``) from set-up to the end of ``fit()``; temp files a killed run left are removed then.

Reproducibility (CPU, fixed seed): epoch ``e`` seeds torch/NumPy/``random`` with ``seed + e`` and calls the
loader's ``set_epoch(e)`` (shuffling and augmentation are functions of ``(seed, epoch, index)``), and the
checkpoint stores every piece of state (raw and EMA weights, optimizer, scheduler, scaler, connectors, RNG),
so a resumed run ends with bitwise the weights of an uninterrupted one. Deterministic algorithms are not
forced (``torch.use_deterministic_algorithms``): CPU kernels are deterministic for a fixed thread count;
CUDA runs are reproducible only up to kernel non-determinism.

Interrupts: the first Ctrl-C (SIGINT) asks the loop to stop after the current step (``fit()`` installs its
handler only where SIGINT is not ignored, e.g. not under ``nohup``/a background job, and restores the previous
handler when it returns); it then writes
``weights/last.pt`` with the exact mid-epoch state (``train.step`` = batches done), and ``resume=true`` skips
those batches of that epoch and continues bitwise-identically. A second Ctrl-C aborts at once (``last.pt`` then
holds the previous end-of-epoch or interrupt state). A non-finite loss term stops the run with ``MtkdError``
naming the epoch, step and term; nothing is saved from that step on, so ``last.pt`` keeps finite weights.
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
from torch import Tensor

from mtkd.checkpoint import save_checkpoint
from mtkd.config import TrainConfig
from mtkd.engine import dist as D
from mtkd.engine.ema import ModelEMA
from mtkd.engine.hooks import HookBase
from mtkd.engine.logger import ResultsCSV, TensorBoard, flatten_metrics, postfix
from mtkd.engine.optim import build_optimizer, build_scheduler
from mtkd.engine.rng import get_rng_state, seed_all, set_rng_state
from mtkd.engine.setup import (
    RunLock,
    build_distill,
    build_student,
    build_teacher,
    check_train_state,
    clean_stale_temps,
    planned_run_dir,
    prepare_run_dir,
    resolve_resume,
)
from mtkd.errors import CheckpointError, ConfigError, MtkdError
from mtkd.utils.atomic import write_text

SHOWN = ("loss", "seg_loss", "det_loss", "seg_kd", "det_kd", "feat_kd")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a Ctrl-C once the resumable checkpoint is written; ``str()`` is the one-line message."""


class Trainer:
    """Train a student (optionally distilled from ``cfg.teacher``) as described by a ``TrainConfig``.

    Args:
        cfg: the validated config (``mtkd.config.load_config``).
        hooks: extra ``HookBase`` objects (run on every rank, in order).

    After ``fit()``: ``run_dir`` holds ``config.yaml``, ``results.csv``, ``weights/last.pt`` and
    ``weights/best.pt``; ``best_fitness``/``best_epoch`` and ``metrics`` hold the best score and the last
    evaluation, ``rows`` the ``results.csv`` rows. During ``fit()`` (from ``setup()`` on) rank 0 holds the run
    folder's lock (``{run_dir}/.lock``); it is released, and the lock file removed, when ``fit()`` returns.
    """

    def __init__(self, cfg: TrainConfig, *, hooks: Sequence[HookBase] = ()) -> None:
        self.cfg = cfg
        self.hooks = list(hooks)
        self.epoch = 0
        self.step = 0  # batches done in the current epoch
        self.best_fitness: float | None = None
        self.best_epoch: int | None = None  # 1-based epoch of best.pt
        self.bad_evals = 0  # evaluations since the last improvement (patience)
        self.eval_pending = False  # last.pt holds a finished epoch whose evaluation has not run yet
        self.rows: list[dict[str, Any]] = []  # results.csv rows, also kept in last.pt
        self.metrics: dict[str, Any] = {}
        self.last_terms: dict[str, Tensor] = {}
        self._stop = False
        self._lock: RunLock | None = None
        self._elapsed0 = 0.0  # training time of earlier sessions (resume)
        self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build everything: data, student, teacher, distillation loss, optimizer, EMA; restore on resume.

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
            print(f"removed {len(removed)} temp file(s) an interrupted run left in {run_dir}")

    def _setup(self) -> None:
        from mtkd.data.build import build_dataloader
        from mtkd.data.descriptor import load_data_yaml

        self.device = D.init_distributed(self.cfg.device)
        self.main = D.is_main()
        planned = planned_run_dir(self.cfg)  # refuses a name that leaves project
        resume_path = Path(self.cfg.resume) if isinstance(self.cfg.resume, str) else planned / "weights" / "last.pt"
        self._on_rank0(lambda: self._take_run_dir(planned))
        cfg, ckpt, self.run_dir = resolve_resume(self.cfg)
        self.cfg = cfg
        resuming = ckpt is not None
        self._on_rank0(lambda: prepare_run_dir(cfg, self.run_dir, resuming=resuming, create=False))  # fail fast
        world = D.world_size()
        if cfg.batch % world:
            raise ConfigError(f"batch: {cfg.batch} is not divisible by the {world} DDP ranks")
        seed_all(cfg.seed)
        self.spec = load_data_yaml(cfg.data)
        params = None
        if cfg.aug:
            from mtkd.data.transforms import AugmentParams

            params = AugmentParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.aug.items()})
        self.train_loader = build_dataloader(
            self.spec, self.spec.require_split("train"), imgsz=cfg.imgsz, batch=cfg.batch // world,
            workers=cfg.workers, augment=cfg.augment, shuffle=True, seed=cfg.seed, distributed=D.is_dist(),
            params=params)
        self.val_loader = None
        if "val" in self.spec.splits:
            self.val_loader = build_dataloader(
                self.spec, "val", imgsz=cfg.imgsz, batch=max(cfg.batch // world, 1), workers=cfg.workers,
                augment=False, shuffle=False, seed=cfg.seed, distributed=D.is_dist())
        self.iters = len(self.train_loader)
        if self.iters == 0:
            raise ConfigError(f"data: the train split of {cfg.data} yields no batches")

        from mtkd.losses.task import TaskLoss

        self.student = build_student(cfg, self.spec, ckpt["model"]["arch"] if ckpt else None).to(self.device)
        self.teacher = build_teacher(cfg, self.spec, self.student, self.device)
        self.distill = build_distill(cfg, self.spec, self.student, self.teacher, self.device)
        self.feature_names = list(self.distill.feature_names) if self.distill is not None else []
        self.task_loss = TaskLoss(self.student, ignore_index=self.spec.ignore_index)
        self.ema = ModelEMA(self.student, decay=cfg.ema_decay, tau=cfg.ema_tau) if cfg.ema else None
        self.model = D.wrap_ddp(self.student, self.device)
        modules = [self.student] + ([self.distill] if self.distill is not None else [])
        self.optimizer = build_optimizer(modules, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, iters_per_epoch=self.iters, epochs=cfg.epochs)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        self.resume_rng = None
        if ckpt is not None:  # validated in full before anything in the run dir is written
            self._load_train_state(ckpt, resume_path)
        self.csv = None
        if self.main:  # everything above validated: now touch the run dir
            prepare_run_dir(cfg, self.run_dir, resuming=resuming, create=True)
            write_text(self.run_dir / "config.yaml",  # re-runnable as is
                       yaml.safe_dump(cfg.replace(resume=False).to_dict(), sort_keys=False), what="config")
            self.csv = ResultsCSV(self.run_dir / "results.csv", rows=None if resuming else [])
            if resuming:
                self._restore_results(ckpt["train"])
                self._restore_best()
        D.barrier()
        self.tb = TensorBoard(self.run_dir, enabled=self.main and cfg.tensorboard)

    def _load_train_state(self, ckpt: dict[str, Any], path: Path) -> None:
        """Restore the training state of ``ckpt`` (read from ``path``); every field is checked, and a field that
        does not fit this run raises a one-line ``CheckpointError`` naming the file and the field."""
        from mtkd.models.build import load_state_strict

        st = check_train_state(ckpt, path)  # types of the scalar fields

        def guard(field: str, fn: Any) -> Any:
            try:
                return fn()
            except CheckpointError:
                raise
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, AssertionError) as e:
                raise CheckpointError(f"{path}: field 'train.{field}' does not fit this run "
                                      f"({_one_line(e)})") from None

        world = st.get("world_size", 1)
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise CheckpointError(f"{path}: field 'train.world_size' must be a positive int, got {world!r}")
        if st["step"] and world != D.world_size():
            raise ConfigError(f"resume: the run was interrupted mid-epoch with {world} DDP ranks; "
                              f"resume it with the same number of ranks (now {D.world_size()})")
        if st["step"] > self.iters:
            raise CheckpointError(f"{path}: field 'train.step' is {st['step']} but an epoch has {self.iters} "
                                  f"batches now (did the data or batch change?)")
        guard("model", lambda: load_state_strict(self.student, st["model"], where=f"{path}: field 'train.model'"))
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        guard("optimizer", lambda: self.optimizer.load_state_dict(st["optimizer"]))
        _check_optimizer(self.optimizer, fresh, f"{path}: field 'train.optimizer'")
        sched = st["scheduler"]
        if isinstance(sched.get("last_epoch"), bool) or not isinstance(sched.get("last_epoch"), int):
            raise CheckpointError(f"{path}: field 'train.scheduler.last_epoch' must be an int, got "
                                  f"{sched.get('last_epoch')!r}")
        guard("scheduler", lambda: self.scheduler.load_state_dict(dict(sched)))
        guard("scaler", lambda: self.scaler.load_state_dict(dict(st["scaler"])))
        if self.ema is not None:
            ema = st.get("ema")
            if not isinstance(ema, dict) or not isinstance(ema.get("state_dict"), dict) or isinstance(
                    ema.get("updates"), bool) or not isinstance(ema.get("updates"), int):
                raise CheckpointError(f"{path}: field 'train.ema' must be a dict with 'state_dict' and 'updates' "
                                      f"(int) for ema=true")
            guard("ema", lambda: load_state_strict(self.ema.ema, ema["state_dict"], where=f"{path}: field 'train.ema'"))
            self.ema.updates = ema["updates"]
        if self.distill is not None:
            guard("distill", lambda: load_state_strict(self.distill, st.get("distill") or {},
                                                       where=f"{path}: field 'train.distill'"))
        now = get_rng_state()  # check the RNG state by setting it, then put the current one back
        try:
            guard("rng", lambda: set_rng_state(st["rng"]))
        finally:
            set_rng_state(now)
        self.meters = guard("meters", lambda: {str(k): float(v) for k, v in (st.get("meters") or {}).items()})
        self.epoch, self.step = st["epoch"], st["step"]
        self.best_fitness = None if st.get("best_fitness") is None else float(st["best_fitness"])
        self.best_epoch = st.get("best_epoch")
        metrics = ckpt.get("metrics")
        self.metrics = dict(metrics) if isinstance(metrics, dict) else {}
        if self.best_epoch is None and self.best_fitness is not None and self.metrics and not st["step"]:
            from mtkd.eval.evaluate import fitness  # a last.pt from before best_epoch was kept

            if guard("metrics", lambda: fitness(self.metrics)) == self.best_fitness:
                self.best_epoch = self.epoch
        self.bad_evals = int(st.get("bad_evals") or 0)
        self.eval_pending = bool(st.get("eval_pending", False))
        self.rows = guard("rows", lambda: [{str(k): v for k, v in r.items()} for r in st.get("rows", [])])
        self._elapsed0 = guard("elapsed", lambda: float(st.get("elapsed", 0.0)))
        self.resume_rng = st["rng"]

    def _restore_results(self, st: dict[str, Any]) -> None:
        """results.csv = the rows kept in last.pt (rows of finished epochs survive a kill before the CSV write)."""
        if "rows" in st:
            self.csv.replace(self.rows)
        else:  # a last.pt from before the rows were kept: trust the CSV up to the resumed epoch
            self.csv.truncate(self.epoch)
            self.rows = [dict(r) for r in self.csv.rows]

    def _restore_best(self) -> None:
        """Re-create a missing best.pt when the best epoch is the resumed one; otherwise say it is lost."""
        best = self.run_dir / "weights" / "best.pt"
        if self.best_fitness is None or best.is_file():
            return
        if self.best_epoch == self.epoch and self.step == 0 and not self.eval_pending:
            save_checkpoint(self.checkpoint(epoch=self.epoch, step=0, best=True), best)
            print(f"re-created {best} (best epoch {self.best_epoch}) from the resumed checkpoint")
            return
        print(f"warning: {best} is missing and its weights (epoch {self.best_epoch or '?'}) cannot be re-created; "
              f"the next evaluation writes a new best.pt")
        self.best_fitness = self.best_epoch = None

    # ------------------------------------------------------------------ the step
    def run_step(self, batch: dict[str, Any], epoch: int, i: int) -> dict[str, Tensor]:
        """One optimization step on ``batch``; returns every loss term (detached 0-d tensors)."""
        cfg = self.cfg
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        images = batch["images"].float()
        g = epoch * self.iters + i
        progress = g / (cfg.epochs * self.iters)
        amp = cfg.amp != "off"
        dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=amp):
            s_out = self.model(images, features=self.feature_names) if self.feature_names else self.model(images)
            task = self.task_loss(s_out, batch)
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(images, features=self.feature_names)
                terms = self.distill(s_out, t_out, task, progress, batch)
            else:
                from mtkd.losses.combine import plain_loss

                terms = plain_loss(task, ratio_seg=cfg.ratio_seg, ratio_det=cfg.ratio_det)
        self._check_finite(terms, epoch, i, g)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if self.distill is not None:
            D.average_gradients(self.distill.parameters())  # connectors live outside DDP
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.student)
        return {k: v.detach().float() for k, v in terms.items()}

    def _check_finite(self, terms: dict[str, Tensor], epoch: int, i: int, g: int) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        bad_here = not bool(torch.isfinite(values).all())
        if not D.any_rank(bad_here, self.device):
            return
        where = f"epoch {epoch + 1} step {i + 1} (global {g + 1})"
        if not bad_here:
            raise MtkdError(f"non-finite loss at {where} on another rank; stopping, weights/last.pt is unchanged")
        names = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        name = next((k for k in names if k != "loss"), names[0])
        raise MtkdError(f"non-finite loss at {where}: term '{name}' = {terms[name].item()}; stopping, "
                        f"weights/last.pt keeps the last finite state (lower lr, check the data, or amp=off)")

    # ------------------------------------------------------------------ epochs
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        skip = self.step
        seed_all(self.cfg.seed + epoch)
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        elif hasattr(getattr(self.train_loader, "sampler", None), "set_epoch"):
            self.train_loader.sampler.set_epoch(epoch)
        self.student.train()
        if self.distill is not None:
            self.distill.train()
        if skip == 0:
            self.meters = {}
        n_img, t0 = 0, time.perf_counter()
        bar = tqdm(total=self.iters, initial=skip, disable=not self.main, leave=True,
                   desc=f"{epoch + 1}/{self.cfg.epochs}", dynamic_ncols=True)
        it = iter(self.train_loader)
        try:
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
                self.last_terms = terms
                for k, v in terms.items():
                    self.meters[k] = self.meters.get(k, 0.0) + float(v)
                self.meters["_n"] = self.meters.get("_n", 0.0) + 1
                n_img += len(batch["images"]) * D.world_size()
                if self.main:
                    bar.set_postfix_str(postfix(terms, n_img / max(time.perf_counter() - t0, 1e-9), SHOWN))
                    bar.update(1)
                    self.tb.scalars({"loss": float(terms["loss"]), "lr": self.lr}, epoch * self.iters + i,
                                    prefix="step/")
                for h in self.hooks:
                    h.after_step()
                if D.any_rank(self._stop, self.device):
                    self._stop = True
                    break
        finally:
            bar.close()
        if self._stop:
            self._interrupt(epoch)
        n = self.meters.get("_n", 1.0)
        means = {k: v / n for k, v in self.meters.items() if k != "_n"}
        keys = [k for k in SHOWN if k in means] + sorted(k for k in means if k not in SHOWN)
        reduced = D.all_reduce_mean(torch.tensor([means[k] for k in keys], dtype=torch.float64))
        return dict(zip(keys, reduced.tolist()))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def evaluate(self) -> tuple[dict[str, Any], float]:
        """Metrics of the EMA (or raw) student on the val split and their fitness (higher is better)."""
        model = self.ema.ema if self.ema is not None else self.student
        if self.val_loader is None:
            return {}, 0.0
        from mtkd.eval.evaluate import evaluate_model, fitness

        metrics = evaluate_model(model, self.val_loader, spec=self.spec, device=self.device, conf=self.cfg.conf,
                                 iou=self.cfg.iou, progress=self.main)
        return metrics, float(fitness(metrics))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, *, epoch: int, step: int, best: bool = False) -> dict[str, Any]:
        """The checkpoint dict (DESIGN.md §4): deployable (EMA) weights + everything needed to resume."""
        from mtkd.models import model_state

        deploy = self.ema.ema if self.ema is not None else self.student
        for name, t in [*deploy.state_dict().items(), *self.student.state_dict().items()]:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise MtkdError(f"refusing to save a checkpoint with non-finite weights ('{name}'); "
                                f"{self.run_dir / 'weights/last.pt'} keeps the last finite state")
        ckpt: dict[str, Any] = {
            "model": model_state(deploy),
            "names": {"det": list(self.spec.det_names), "seg": list(self.spec.seg_names)},
            "config": self.cfg.to_dict(),
            "metrics": self.metrics,
        }
        train = {"epoch": epoch, "step": step, "best_fitness": self.best_fitness, "best_epoch": self.best_epoch,
                 "epochs": self.cfg.epochs}
        if not best:
            train.update(
                model=self.student.state_dict(), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                distill=self.distill.state_dict() if self.distill is not None else {},
                rng=get_rng_state(), meters=dict(self.meters) if step else {}, world_size=D.world_size(),
                rows=[dict(r) for r in self.rows], bad_evals=self.bad_evals, eval_pending=self.eval_pending,
                elapsed=self._elapsed())
        ckpt["train"] = train
        return ckpt

    def _interrupt(self, epoch: int) -> None:
        path = self.run_dir / "weights" / "last.pt"
        if self.main:
            save_checkpoint(self.checkpoint(epoch=epoch, step=self.step), path)
        D.barrier()
        raise TrainingInterrupted(f"interrupted at epoch {epoch + 1} step {self.step}/{self.iters}; resumable "
                                  f"checkpoint {path} (continue with resume=true)")

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
            for h in self.hooks:
                h.trainer = self
                h.before_train()
            self._loop()
            for h in self.hooks:
                h.after_train()
            return self.run_dir
        finally:
            if installed:
                signal.signal(signal.SIGINT, previous)
            if getattr(self, "tb", None) is not None:
                self.tb.close()
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
            print("\nCtrl-C: stopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)")

    def _elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t_start

    def _save_last(self, epoch: int) -> None:
        """Rank 0: ``last.pt`` (state after ``epoch`` epochs), then ``results.csv`` from the rows."""
        if self.main:
            save_checkpoint(self.checkpoint(epoch=epoch, step=0), self.run_dir / "weights" / "last.pt")
            self.csv.replace(self.rows)

    def _evaluate_epoch(self, epoch: int) -> float:
        """Evaluate after epoch ``epoch`` (0-based) whose ``last.pt`` is written: best.pt first when improved, then
        last.pt and results.csv with the metrics. Returns the fitness."""
        self.metrics, fit = self.evaluate()
        improved = self.best_fitness is None or fit > self.best_fitness
        if improved:
            self.best_fitness, self.best_epoch = fit, epoch + 1
        self.bad_evals = 0 if improved else self.bad_evals + 1
        row = self.rows[-1] if self.rows and int(float(self.rows[-1]["epoch"])) == epoch + 1 else {"epoch": epoch + 1}
        train_part = {k: v for k, v in row.items() if k != "time"}
        self.rows[-1:] = [{**train_part, **self._metric_cols(), "fitness": fit, "time": self._elapsed()}]
        self.eval_pending = False
        if self.main:
            if improved:
                save_checkpoint(self.checkpoint(epoch=epoch + 1, step=0, best=True),
                                self.run_dir / "weights" / "best.pt")
        self._save_last(epoch + 1)
        return fit

    def _metric_cols(self) -> dict[str, float]:
        return flatten_metrics({k: v for k, v in self.metrics.items() if k != "data"})

    def _end_of_epoch_output(self, epoch: int, fit: float | None, done: int) -> None:
        """Rank 0: TensorBoard scalars and the console line of epoch ``epoch`` (0-based)."""
        if not self.main:
            return
        row = self.rows[-1] if self.rows else {}
        self.tb.scalars({k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}, epoch + 1,
                        prefix="epoch/")
        eta = (time.perf_counter() - self._t_start) / max(done, 1) * (self.cfg.epochs - epoch - 1)
        loss = row.get("loss", float("nan"))
        print(f"epoch {epoch + 1}/{self.cfg.epochs}: loss {float(loss):.4g}"
              + (f", fitness {fit:.4g}" if fit is not None else "") + f", ETA {eta:.0f}s")

    def _early_stop(self) -> bool:
        if self.cfg.patience and self.bad_evals >= self.cfg.patience:
            if self.main:
                print(f"early stop: no fitness improvement in {self.cfg.patience} evaluations")
            return True
        return False

    def _loop(self) -> None:
        cfg = self.cfg
        self._t_start = time.perf_counter()
        start = self.epoch
        if self.eval_pending:  # resumed from a last.pt written before its epoch's evaluation: run it now
            fit = self._evaluate_epoch(start - 1)
            self._end_of_epoch_output(start - 1, fit, 1)
            D.barrier()
            if self._early_stop():
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
                row.update(self._metric_cols())
            self.rows.append({**row, "time": self._elapsed()})
            self._save_last(epoch + 1)  # the epoch's training is safe before the evaluation starts
            fit = self._evaluate_epoch(epoch) if self.eval_pending else None
            self._end_of_epoch_output(epoch, fit, epoch + 1 - start)
            D.barrier()
            for h in self.hooks:
                h.after_epoch()
            if self._early_stop():
                break


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
            ok = (isinstance(got, (int, float, Tensor)) and not isinstance(got, bool) if number
                  else isinstance(got, (tuple, list)) and len(got) == len(v) if isinstance(v, (tuple, list))
                  else type(got) is type(v) if isinstance(v, bool) else True)
            if not ok:
                raise CheckpointError(f"{where}: param_groups[{i}].{k} is {got!r}, expected a value like {v!r}")
        for j, p in enumerate(group["params"]):
            for k, v in opt.state.get(p, {}).items():
                if k == "step":
                    if not isinstance(v, (int, float, Tensor)) or (isinstance(v, Tensor) and v.numel() != 1):
                        raise CheckpointError(f"{where}: state of param_groups[{i}] parameter {j}: 'step' is not a "
                                              f"number")
                elif v is not None and (not isinstance(v, Tensor) or tuple(v.shape) != tuple(p.shape)):
                    shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise CheckpointError(f"{where}: state '{k}' of param_groups[{i}] parameter {j} is {shape}, its "
                                          f"parameter has shape {tuple(p.shape)}")
