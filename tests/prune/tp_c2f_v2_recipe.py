"""A user's pruning script after Torch-Pruning's YOLOv8 example (``examples/yolov8/yolov8_pruning.py``): swap
Ultralytics' ``C2f`` for a split-free ``C2f_v2`` defined *in the script*, prune with Torch-Pruning, save the whole
model with ``torch.save``. The pickle then names ``__main__.C2f_v2``, which no other process can import: what
``mtkd convert --trust-pickle --import THIS_FILE.py`` resolves.

Run as a script: ``python tp_c2f_v2_recipe.py OUT.pt [--ratio 0.5]`` (yolov8n, 3 classes).
"""

from __future__ import annotations

import sys

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules import Bottleneck, C2f, Conv, Detect


class C2f_v2(nn.Module):  # noqa: N801 - the name Torch-Pruning's example uses
    """``C2f`` with its ``cv1`` split into ``cv0`` (first half) and ``cv1`` (second half)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv0 = Conv(c1, self.c, 1, 1)
        self.cv1 = Conv(c1, self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _transfer(c2f: C2f, v2: C2f_v2) -> None:
    v2.cv2, v2.m = c2f.cv2, c2f.m
    sd, sd2 = c2f.state_dict(), v2.state_dict()
    half = sd["cv1.conv.weight"].shape[0] // 2
    for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        sd2[f"cv0.{key}"] = sd[f"cv1.{key}"][:half]
        sd2[f"cv1.{key}"] = sd[f"cv1.{key}"][half:]
    for key, value in sd.items():
        if not key.startswith("cv1."):
            sd2[key] = value
    # Ultralytics' layer bookkeeping (the example copies every public attribute)
    for attr in ("f", "i", "type", "np"):
        setattr(v2, attr, getattr(c2f, attr))
    v2.load_state_dict(sd2)


def replace_c2f_with_c2f_v2(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is C2f:
            b = child.m[0]
            v2 = C2f_v2(child.cv1.conv.in_channels, child.cv2.conv.out_channels, n=len(child.m), shortcut=b.add,
                        g=b.cv2.conv.groups, e=child.c / child.cv2.conv.out_channels)  # fmt: skip
            _transfer(child, v2)
            setattr(module, name, v2)
        else:
            replace_c2f_with_c2f_v2(child)


def prune(model: nn.Module, ratio: float, imgsz: int = 64) -> nn.Module:
    """The example's pruner: group magnitude, the whole ``Detect`` head ignored."""
    ignored = [m for m in model.modules() if isinstance(m, Detect)]
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model, torch.rand(1, 3, imgsz, imgsz), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=ignored,
    )  # fmt: skip
    pruner.step()
    return model


def build_and_prune(ratio: float = 0.5) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    replace_c2f_with_c2f_v2(model)
    return prune(model, ratio)


if __name__ == "__main__":
    ratio = float(sys.argv[sys.argv.index("--ratio") + 1]) if "--ratio" in sys.argv else 0.5
    torch.save(build_and_prune(ratio), sys.argv[1])
