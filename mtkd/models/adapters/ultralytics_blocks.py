"""Split-free, weight-preserving equivalents of Ultralytics' channel-splitting blocks (prunable by Torch-Pruning).

Ultralytics' CSP blocks compute one ``cv1`` convolution and split its output in two halves (``chunk``/``split``
along channels). Torch-Pruning's dependency graph cannot follow such splits (``IndexError: index 192 is out of
bounds`` on ``C2f``), so pruning them needs the block rewritten without the split; Torch-Pruning's YOLOv8 example
does this for ``C2f`` (its ``C2f_v2``: ``cv1`` becomes two convolutions ``cv0`` and ``cv1``). Here the same idea
covers every splitting block of the YOLOv5/v8/11/26 families:

=================================  ======================================  =====================================
Ultralytics block                  split-free block                        forward
=================================  ======================================  =====================================
``C2f``, ``C3k2``, ``C2fCIB``,     ``C2fSplitFree`` (``cv0``, ``cv1``,      ``cv2(cat(cv0(x), cv1(x), m_1, ...))``
``C2fPSA`` (YOLOv8/11/26)          ``cv2``, ``m``; Torch-Pruning's          (``m_i`` applied in sequence on the
                                   ``C2f_v2`` layout)                      last output)
``C2``                             ``C2SplitFree``                         ``cv2(cat(m(cv0(x)), cv1(x)))``
``C2PSA`` (YOLO11/26)              ``C2PSASplitFree``                      ``cv2(cat(cv0(x), m(cv1(x))))``
``PSA`` (YOLOv10)                  ``PSASplitFree``                        ``b = cv1(x); b += attn(b);
                                                                           b += ffn(b); cv2(cat(cv0(x), b))``
=================================  ======================================  =====================================

``cv0``/``cv1`` are the first/second half of the original ``cv1`` (its conv weight rows and BatchNorm entries),
every other submodule is moved over unchanged, so ``make_split_free`` keeps the outputs (equal to float
tolerance: the convolutions sum the same products) and the state_dict changes only from ``cv1.*`` to
``cv0.*`` + ``cv1.*``. YOLOv5's ``C3`` and ``C3k`` never split. The multi-head ``Attention`` inside ``PSABlock``
splits q/k/v per head after a reshape; its channels are kept whole when pruning (``attention_modules``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from mtkd.errors import ConfigError

#: attributes Ultralytics' ``parse_model`` sets on each top-level layer (used by ``_predict_once`` and ours)
_LAYER_ATTRS = ("f", "i", "type", "np")


class _SplitFree(nn.Module):
    """Base: ``cv0``/``cv1`` = the two halves of the original ``cv1``; ``cv2`` and the inner modules as they were."""

    #: names of the submodules moved over unchanged from the original block
    _KEEP: tuple[str, ...] = ("cv2", "m")

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        c = _half_width(block)
        self.c = c
        self.cv0 = _slice_out(block.cv1, 0, c)
        self.cv1 = _slice_out(block.cv1, c, 2 * c)
        for name in self._KEEP:
            setattr(self, name, getattr(block, name))
        for attr in _LAYER_ATTRS:
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))
        self.train(block.training)


class C2fSplitFree(_SplitFree):
    """``C2f`` / ``C3k2`` / ``C2fCIB`` / ``C2fPSA`` without the split: ``[B, c1, H, W]`` → ``[B, c2, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2SplitFree(_SplitFree):
    """``C2`` without the split: ``[B, c1, H, W]`` → ``[B, c2, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(torch.cat((self.m(self.cv0(x)), self.cv1(x)), 1))


class C2PSASplitFree(_SplitFree):
    """``C2PSA`` without the split: ``[B, c, H, W]`` → ``[B, c, H, W]``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


class PSASplitFree(_SplitFree):
    """``PSA`` without the split: ``[B, c, H, W]`` → ``[B, c, H, W]``."""

    _KEEP = ("cv2", "attn", "ffn")

    def forward(self, x: Tensor) -> Tensor:
        b = self.cv1(x)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((self.cv0(x), b), 1))


SPLIT_FREE_TYPES = (C2fSplitFree, C2SplitFree, C2PSASplitFree, PSASplitFree)


def _targets() -> dict[type, type[_SplitFree]]:
    """Ultralytics block class → its split-free class (exact types: a subclass may change ``forward``)."""
    from ultralytics.nn.modules import block as b

    return {
        b.C2f: C2fSplitFree, b.C3k2: C2fSplitFree, b.C2fCIB: C2fSplitFree, b.C2fPSA: C2fSplitFree,
        b.C2: C2SplitFree, b.C2PSA: C2PSASplitFree, b.PSA: PSASplitFree,
    }  # fmt: skip


def _half_width(block: nn.Module) -> int:
    conv = block.cv1.conv
    if conv.groups != 1 or conv.out_channels % 2:
        raise ConfigError(
            f"split-free conversion: {type(block).__name__}.cv1 has groups={conv.groups} and "
            f"{conv.out_channels} output channels; expected groups=1 and an even count"
        )
    return conv.out_channels // 2


def _slice_out(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an Ultralytics ``Conv`` (conv, bn, act) keeping output channels ``start:stop``."""
    new = copy.copy(conv_block)  # shallow: share act; conv/bn replaced below
    new._modules = dict(conv_block._modules)
    conv = conv_block.conv
    kw: dict[str, Any] = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    new.conv = nn.Conv2d(
        conv.in_channels, stop - start, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode, **kw,
    )  # fmt: skip
    with torch.no_grad():
        new.conv.weight.copy_(conv.weight[start:stop])
        if conv.bias is not None:
            new.conv.bias.copy_(conv.bias[start:stop])
    new.conv.requires_grad_(conv.weight.requires_grad)
    bn = getattr(conv_block, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        new.bn = nn.BatchNorm2d(stop - start, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **kw)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                src = getattr(bn, name)
                if src is not None:
                    getattr(new.bn, name).copy_(src[start:stop])
            if bn.num_batches_tracked is not None:
                new.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        new.bn.requires_grad_(bn.weight is None or bn.weight.requires_grad)
    return new


def convertible_paths(model: nn.Module) -> list[str]:
    """Module paths (relative to ``model``) of the Ultralytics blocks ``make_split_free`` would replace."""
    targets = _targets()
    return [name for name, m in model.named_modules() if type(m) in targets]


def make_split_free(model: nn.Module, paths: Iterable[str] | None = None, *, where: str = "") -> list[str]:
    """Replace channel-splitting blocks of ``model`` in place by their split-free equivalents (same outputs).

    Args:
        paths: module paths to convert (e.g. from an arch); default: every convertible block.
        where: prefix of the ``ConfigError`` raised when a path is not a convertible block.

    Returns the converted paths, sorted as in ``model.named_modules()``.
    """
    targets = _targets()
    want = convertible_paths(model) if paths is None else list(paths)
    known = dict(model.named_modules())
    for path in want:
        block = known.get(path)
        if block is None or type(block) not in targets:
            have = type(block).__name__ if block is not None else "nothing"
            raise ConfigError(
                f"{where or 'split-free conversion'}: {path!r} is {have}, not a splitting Ultralytics block "
                f"({', '.join(sorted(t.__name__ for t in targets))})"
            )
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, targets[type(block)](block))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(want, key=lambda p: order.get(p, -1))


def split_free_paths(model: nn.Module) -> list[str]:
    """Module paths of split-free blocks in ``model``: mtkd's, and foreign ones with the same layout (e.g.
    Torch-Pruning's ``C2f_v2`` from a user's script: a non-Ultralytics module with ``cv0``, ``cv1``, ``cv2``)."""
    out = []
    for name, m in model.named_modules():
        foreign = not type(m).__module__.startswith(("ultralytics.", "mtkd.")) and all(
            isinstance(getattr(m, a, None), nn.Module) for a in ("cv0", "cv1", "cv2")
        )
        if isinstance(m, SPLIT_FREE_TYPES) or foreign:
            out.append(name)
    return out


#: Ultralytics blocks that split channels and have no split-free equivalent here (YOLOv9, YOLO-World)
UNSUPPORTED = ("RepNCSPELAN4", "ELAN1", "ADown", "C2fAttn", "CBLinear", "CBFuse")


def unsupported_blocks(model: nn.Module) -> list[str]:
    """Class names of the channel-splitting blocks in ``model`` that ``make_split_free`` cannot convert."""
    return sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in UNSUPPORTED})


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Ultralytics ``Attention``/``AAttn`` modules: their per-head q/k/v split must keep its channels."""
    from ultralytics.nn.modules.block import AAttn, Attention

    return [m for m in model.modules() if isinstance(m, (Attention, AAttn))]
