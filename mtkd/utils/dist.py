"""The one ``torchrun`` / DDP helper module (trainer and evaluators): init from env vars, rank-0 checks,
reductions and gathers; every function is a no-op (or the identity) in a single process.

``torchrun --nproc_per_node N tools/train.py CONFIG`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``; ``init_distributed`` reads them (gloo on CPU, NCCL on CUDA). Without them
everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtkd.errors import ConfigError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_dist() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when not distributed."""
    return rank(), world_size()


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs and writes files."""
    return rank() == 0


def init_distributed(device: str) -> torch.device:
    """Initialize the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); return this rank's device.

    ``device="cuda"``/``"cuda:N"`` with DDP uses ``cuda:LOCAL_RANK`` and NCCL; ``"cpu"`` uses gloo.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available (use device=cpu)")
    if env_world_size() <= 1:
        return torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return dev


def cleanup(*, synchronize: bool = False) -> None:
    """Destroy the process group (if any).

    ``synchronize``: meet the other ranks at a barrier first (pass ``True`` after a run that ended normally on
    every rank). Without it, a rank that tears gloo down while a peer still flushes its last collective can make
    that peer abort at exit (``terminate called without an active exception``). Never synchronize after an
    error: the other ranks may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _reduce_device(t: torch.Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (new tensor on ``t``'s device; identity copy when not distributed)."""
    if not is_dist():
        return t.detach().clone()
    buf = t.detach().to(_reduce_device(t), dtype=torch.float64, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / dist.get_world_size()).to(device=t.device, dtype=t.dtype)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (one tiny all-reduce; local value when not distributed)."""
    if not is_dist():
        return bool(flag)
    buf = torch.tensor([float(flag)], device=_reduce_device(torch.empty(0, device=device)))
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item() > 0)


def broadcast_object(obj):
    """``obj`` from rank 0 on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``model`` (the training task: student + connectors) when distributed; else return it unchanged."""
    if not is_dist():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(
        model,
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


def gather_objects(obj: Any) -> list[Any]:
    """``all_gather_object`` of ``obj`` from every rank, in rank order; ``[obj]`` when not distributed."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (returns a new tensor on ``t``'s device; ``t`` is left unchanged).

    NCCL needs CUDA tensors, so the reduction runs on the current CUDA device for that backend.
    """
    if not is_dist():
        return t.clone()
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    buf = t.detach().to(dev, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)
