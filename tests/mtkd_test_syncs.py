"""What a CUDA step would wait for, counted on the CPU: shared by the task-loss and the training-step tests.

Importable from any test module (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten operations that read a value on the host or whose output shape depends on values
VALUE_READS = (
    "nonzero",
    "_local_scalar_dense",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
)


class SyncingOps(TorchDispatchMode):
    """Records, in ``ops``, the aten operations that wait for a device's results: reading a value (``item``,
    ``bool``), value-dependent shapes (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masks = args[1] if name in ("index", "index_put", "index_put_") and len(args) > 1 else ()
        if name in VALUE_READS or any(
            isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks or ()
        ):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))
