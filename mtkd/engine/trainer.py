"""The training loop: one loop for plain and distilled training (``Trainer(cfg).fit()``).

Per step (``run_step``): batch → student forward (with feature taps when feature KD is on) → teacher forward
(frozen, eval mode, ``torch.no_grad``) → ``TaskLoss`` → ``DistillLoss`` (or ``plain_loss``) → every term
checked finite → backward (``GradScaler`` for fp16) → gradient clipping → optimizer step → per-iteration LR
schedule → EMA update. Per epoch: mean of every term (reduced over DDP ranks) → evaluation every ``eval_every``
epochs (``mtkd.eval.evaluate``) → ``weights/last.pt`` (and ``best.pt`` when the fitness improves) →
``results.csv`` and TensorBoard (rank 0).

Reproducibility (CPU, fixed seed): epoch ``e`` seeds torch/NumPy/``random`` with ``seed + e`` and calls the
loader's ``set_epoch(e)`` (shuffling and augmentation are functions of ``(seed, epoch, index)``), and the
checkpoint stores every piece of state (raw and EMA weights, optimizer, scheduler, scaler, connectors, RNG),
so a resumed run ends with bitwise the weights of an uninterrupted one. Deterministic algorithms are not
forced (``torch.use_deterministic_algorithms``): CPU kernels are deterministic for a fixed thread count;
CUDA runs are reproducible only up to kernel non-determinism.

Interrupts: the first Ctrl-C (SIGINT) asks the loop to stop after the current step; it then writes
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
from torch import Tensor

from mtkd.config import TrainConfig, save_config
from mtkd.engine import dist as D
from mtkd.engine.checkpoint import save_checkpoint
from mtkd.engine.ema import ModelEMA
from mtkd.engine.hooks import HookBase
from mtkd.engine.logger import ResultsCSV, TensorBoard, flatten_metrics, postfix
from mtkd.engine.optim import build_optimizer, build_scheduler
from mtkd.engine.rng import get_rng_state, seed_all, set_rng_state
from mtkd.engine.setup import build_distill, build_student, build_teacher, prepare_run_dir, resolve_resume
from mtkd.errors import ConfigError, MtkdError

SHOWN = ("loss", "seg_loss", "det_loss", "seg_kd", "det_kd", "feat_kd")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after a Ctrl-C once the resumable checkpoint is written; ``str()`` is the one-line message."""


class Trainer:
    """Train a student (optionally distilled from ``cfg.teacher``) as described by a ``TrainConfig``.

    Args:
        cfg: the validated config (``mtkd.config.load_config``).
        hooks: extra ``HookBase`` objects (run on every rank, in order).

    After ``fit()``: ``run_dir`` holds ``config.yaml``, ``results.csv``, ``weights/last.pt`` and
    ``weights/best.pt``; ``best_fitness`` and ``metrics`` hold the best score and the last evaluation.
    """

    def __init__(self, cfg: TrainConfig, *, hooks: Sequence[HookBase] = ()) -> None:
        self.cfg = cfg
        self.hooks = list(hooks)
        self.epoch = 0
        self.step = 0  # batches done in the current epoch
        self.best_fitness: float | None = None
        self.metrics: dict[str, Any] = {}
        self.last_terms: dict[str, Tensor] = {}
        self._stop = False

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build everything: data, student, teacher, distillation loss, optimizer, EMA; restore on resume."""
        from mtkd.data.build import build_dataloader
        from mtkd.data.descriptor import load_data_yaml

        self.device = D.init_distributed(self.cfg.device)
        cfg, ckpt, self.run_dir = resolve_resume(self.cfg)
        self.cfg = cfg
        self.main = D.is_main()
        prepare_run_dir(cfg, self.run_dir, resuming=ckpt is not None, create=False)  # fail fast, write later
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
        if self.main:  # everything above validated: now touch the run dir
            prepare_run_dir(cfg, self.run_dir, resuming=ckpt is not None, create=True)
            save_config(cfg.replace(resume=False), self.run_dir / "config.yaml")  # re-runnable as is
        D.barrier()
        self.csv = ResultsCSV(self.run_dir / "results.csv") if self.main else None
        self.resume_rng = None
        if ckpt is not None:
            self._load_train_state(ckpt["train"])
        self.tb = TensorBoard(self.run_dir, enabled=self.main and cfg.tensorboard)

    def _load_train_state(self, st: dict[str, Any]) -> None:
        if int(st["step"]) and int(st.get("world_size", 1)) != D.world_size():
            raise ConfigError(f"resume: the run was interrupted mid-epoch with {st.get('world_size', 1)} DDP ranks; "
                              f"resume it with the same number of ranks (now {D.world_size()})")
        self.student.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(st["ema"])
        if self.distill is not None:
            self.distill.load_state_dict(st["distill"])
        self.epoch, self.step = int(st["epoch"]), int(st["step"])
        self.best_fitness = st.get("best_fitness")
        self.meters = {k: float(v) for k, v in st.get("meters", {}).items()}
        self.resume_rng = st["rng"]
        if self.csv is not None:
            self.csv.truncate(self.epoch)

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
        train = {"epoch": epoch, "step": step, "best_fitness": self.best_fitness, "epochs": self.cfg.epochs}
        if not best:
            train.update(
                model=self.student.state_dict(), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
                distill=self.distill.state_dict() if self.distill is not None else {},
                rng=get_rng_state(), meters=dict(self.meters) if step else {}, world_size=D.world_size())
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
        """Train to ``cfg.epochs``; returns the run dir. Ctrl-C → ``TrainingInterrupted`` after saving."""
        old_handler, self._pid = None, os.getpid()
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
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
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
            if getattr(self, "tb", None) is not None:
                self.tb.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: ignore, the main process winds down
            return
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        if D.is_main():
            print("\nCtrl-C: stopping after this step and saving a resumable checkpoint (Ctrl-C again to abort)")

    def _loop(self) -> None:
        cfg, bad_evals, t_start = self.cfg, 0, time.perf_counter()
        start = self.epoch
        for epoch in range(start, cfg.epochs):
            self.epoch = epoch
            for h in self.hooks:
                h.before_epoch()
            train_means = self.train_one_epoch(epoch)
            self.step = 0
            last = epoch + 1 == cfg.epochs
            improved, fit = False, None
            if (epoch + 1) % cfg.eval_every == 0 or last:
                self.metrics, fit = self.evaluate()
                improved = self.best_fitness is None or fit > self.best_fitness
                if improved:
                    self.best_fitness = fit
                bad_evals = 0 if improved else bad_evals + 1
            row = {"epoch": epoch + 1, **train_means, "lr": self.lr,
                   **flatten_metrics({k: v for k, v in self.metrics.items() if k != "data"}),
                   "fitness": fit, "time": time.perf_counter() - t_start}
            if self.main:
                save_checkpoint(self.checkpoint(epoch=epoch + 1, step=0), self.run_dir / "weights" / "last.pt")
                if improved:
                    save_checkpoint(self.checkpoint(epoch=epoch + 1, step=0, best=True),
                                    self.run_dir / "weights" / "best.pt")
                self.csv.append({k: v for k, v in row.items() if v is not None})
                self.tb.scalars({k: v for k, v in row.items() if k != "epoch" and v is not None}, epoch + 1,
                                prefix="epoch/")
                done = epoch + 1 - start
                eta = (time.perf_counter() - t_start) / done * (cfg.epochs - epoch - 1)
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_means.get('loss', float('nan')):.4g}"
                      + (f", fitness {fit:.4g}" if fit is not None else "") + f", ETA {eta:.0f}s")
            D.barrier()
            for h in self.hooks:
                h.after_epoch()
            if cfg.patience and bad_evals >= cfg.patience:
                if self.main:
                    print(f"early stop: no fitness improvement in {cfg.patience} evaluations")
                break
