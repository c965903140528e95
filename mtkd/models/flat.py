"""A flat, tensors-only view of an adapter's output, for tools that need plain tensors.

Torch-Pruning's dependency graph, ``torch.onnx.export`` and output-by-output comparisons all want a forward that
returns a tuple of tensors instead of a ``MultiTaskOutput``. ``FlatOutputs(adapter)`` wraps an adapter (the
adapter stays a submodule, so pruning the wrapper prunes the adapter in place) and returns, in order:

- ``seg``: ``[B, C_seg, H, W]`` segmentation logits (when the model has a seg head); a model with several seg
  tasks gives ``seg_<task>`` ``[B, C_task, H, W]`` per task instead, in task order;
- the raw detection head output, one tensor per entry:
    * ``anchor`` heads (a list per level): ``det_0, det_1, ...`` each ``[B, na, H_l, W_l, 5 + nc]``;
    * ``anchor_free`` heads (a dict): ``det_boxes [B, 4*reg_max, A]``, ``det_scores [B, nc, A]`` (the per-level
      ``feats`` are the same numbers before concatenation and are left out);
    * a single tensor: ``det``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtkd.models.outputs import MultiTaskOutput


def flatten_output(out: MultiTaskOutput) -> dict[str, Tensor]:
    """Named tensors of ``out`` in a fixed order (see the module docstring for the names and shapes)."""
    flat: dict[str, Tensor] = {}
    if out.seg is not None:
        flat["seg"] = out.seg
    for task, logits in out.seg_tasks.items():
        flat[f"seg_{task}"] = logits
    if out.det is not None:
        raw = out.det.raw
        if isinstance(raw, Tensor):
            flat["det"] = raw
        elif isinstance(raw, dict):
            for key, value in raw.items():
                if isinstance(value, Tensor):
                    flat[f"det_{key}"] = value
        elif isinstance(raw, (list, tuple)) and all(isinstance(v, Tensor) for v in raw):
            for i, value in enumerate(raw):
                flat[f"det_{i}"] = value
        else:  # unknown raw layout: fall back to the uniform view every DetOutput has
            flat["det_box"] = out.det.box
            if out.det.obj is not None:
                flat["det_obj"] = out.det.obj
            flat["det_cls"] = out.det.cls
    return flat


class FlatOutputs(nn.Module):
    """``forward(images [B, 3, H, W]) -> tuple[Tensor, ...]`` in the order of ``output_names(images)``."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_output(self.adapter(images)).values())

    def output_names(self, images: Tensor) -> list[str]:
        """Names of the outputs for this model (runs one forward pass on ``images``)."""
        return list(flatten_output(self.adapter(images)).keys())


def named_outputs(adapter: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Run ``adapter(images)`` and return its flat named outputs."""
    return flatten_output(adapter(images))


def max_abs_diffs(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    """Per-output ``max |a - b|`` (``inf`` when an output is missing or its shape differs)."""
    diffs: dict[str, float] = {}
    for name in list(a) + [n for n in b if n not in a]:
        x, y = a.get(name), b.get(name)
        if x is None or y is None or tuple(x.shape) != tuple(y.shape):
            diffs[name] = float("inf")
        else:
            diffs[name] = float((x.detach().float() - y.detach().float()).abs().max()) if x.numel() else 0.0
    return diffs


def format_diffs(diffs: dict[str, float], names: Sequence[str] | None = None) -> str:
    """One line: ``seg=1.2e-07 det_0=3.4e-07 ...``."""
    keys = list(names) if names is not None else list(diffs)
    return " ".join(f"{k}={diffs[k]:.3g}" for k in keys)
