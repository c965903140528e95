"""Structured (channel) pruning of a multi-task adapter with Torch-Pruning, saved as a safe checkpoint.

``prune_model`` removes whole channels from convolutions and everything coupled to them (BN, the next layer's
inputs, concatenations, residual adds): Torch-Pruning's dependency graph finds the coupled groups. What must
keep its width is never pruned: the detection-head output convolutions (boxes/objectness/classes, DFL) and the
segmentation classifier. They come from the model (``ignored_layers()``, see
``mtkd.models.yolo_mt.prune_ignored_layers``) and, for any adapter, from a generic rule: the last convolution on
every path to each output tensor (``output_layers``).

Importance criteria (``importance=``):
- ``"magnitude"``: L2 norm of each channel's weights across its group (``GroupMagnitudeImportance(p=2)``);
- ``"bn_scale"``: |gamma| of the BatchNorm layers in the group (network slimming, ``BNScalePruner``);
- ``"taylor"``: first-order Taylor ``|w * dL/dw|`` (``GroupTaylorImportance``). It needs gradients: by default
  ``L`` is a data-free surrogate, the mean squared output (seg logits + raw det) on random images, i.e. how much
  each channel contributes to the model's output energy. Pass ``loss_fn(model, images) -> scalar`` (e.g. the
  task loss on a real batch) for a data-driven estimate.

Adapters may take part (duck-typed, all optional): ``ignored_layers()`` (layers whose widths are fixed),
``pruning()`` (a context manager making the model prunable for the duration, e.g. the Ultralytics adapter's
split-free blocks) and ``pruning_outputs(images)`` (every output branch as a tuple of tensors, including branches
``forward`` skips, so Torch-Pruning's tracer prunes their inputs too). A layer that no traced output depends on
would lose its input channels without being pruned itself: such a model is refused up front
(``unmapped_layers``).

``ratio`` is Torch-Pruning's channel ratio: 0.5 removes half of the channels of every prunable layer (uniform)
or half of all prunable channels, ranked together (``global_pruning=True``); parameters and MACs then drop by
roughly ``1 - (1 - ratio)**2``. ``target_macs`` prunes in small steps until the MACs at ``imgsz`` fall below it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.flat import FlatOutputs

IMPORTANCES = ("magnitude", "bn_scale", "taylor")
#: largest channel ratio a target-MACs search may reach
MAX_TARGET_RATIO = 0.9
TARGET_STEPS = 30


class TracedOutputs(FlatOutputs):
    """What Torch-Pruning traces: ``adapter.pruning_outputs(images)`` when the adapter has it (every branch),
    else ``FlatOutputs`` (``seg``, raw det tensors)."""

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        fn = getattr(self.adapter, "pruning_outputs", None)
        return tuple(fn(images)) if callable(fn) else super().forward(images)


_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _graph_producers(model: nn.Module, example: Tensor) -> tuple[dict[Any, nn.Module], tuple[Tensor, ...]]:
    """``{grad_fn: layer}`` of every conv/linear/norm output in one traced forward, and the traced outputs."""
    producers: dict[Any, nn.Module] = {}

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.grad_fn is not None:
            producers.setdefault(out.grad_fn, mod)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _LAYERS)]
    try:
        with torch.enable_grad():
            outs = TracedOutputs(model)(example.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    return producers, outs


def _walk(outs: tuple[Tensor, ...], producers: dict[Any, nn.Module], *, stop: bool) -> dict[int, nn.Module]:
    """Layers met walking the autograd graph back from ``outs`` (``stop``: not past the first layer met)."""
    found: dict[int, nn.Module] = {}
    for t in outs:
        stack, seen = [t.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in producers:
                found.setdefault(id(producers[node]), producers[node])
                if stop:
                    continue
            stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def output_layers(model: nn.Module, example: Tensor) -> list[nn.Module]:
    """The last conv/linear layer on every path to each traced output (``TracedOutputs(model)(example)``).

    Walks the autograd graph back from each output tensor and stops at the first node produced by a
    ``Conv*``/``Linear`` module: those layers set the number of output channels (det outputs, seg logits).
    """
    producers, outs = _graph_producers(model, example)
    producers = {k: m for k, m in producers.items() if not isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return list(_walk(outs, producers, stop=True).values())


def unmapped_layers(model: nn.Module, example: Tensor, ignored: list[nn.Module]) -> list[str]:
    """Names of conv/linear/norm layers that no traced output depends on (a branch the adapter does not map,
    e.g. YOLOP's lane head): Torch-Pruning would prune the channels feeding them but not the layers themselves.
    Layers in ``ignored`` (and their children) are exempt (e.g. the fixed DFL kernel)."""
    producers, outs = _graph_producers(model, example)
    used = _walk(outs, producers, stop=False)
    exempt = {id(m) for layer in ignored for m in layer.modules()}
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, _LAYERS) and id(m) not in used and id(m) not in exempt
    ]


def ignored_layers_of(model: nn.Module, example: Tensor) -> list[nn.Module]:
    """Model-declared output layers (``prune_ignored_layers``) plus the generic ``output_layers`` rule."""
    from mtkd.models.yolo_mt import prune_ignored_layers

    layers = {id(m): m for m in prune_ignored_layers(model)}
    layers.update({id(m): m for m in output_layers(model, example)})
    return list(layers.values())


def _surrogate_loss(model: nn.Module, images: Tensor) -> Tensor:
    """Data-free Taylor loss: mean squared value of every traced output (seg logits, raw det tensors)."""
    return sum(t.float().pow(2).mean() for t in TracedOutputs(model)(images))


def _importance(name: str) -> tp.importance.Importance:
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ConfigError(f"importance: expected one of {', '.join(IMPORTANCES)}, got {name!r}")


@contextmanager
def _torch_pruning_errors(model: nn.Module) -> Iterator[None]:
    """Turn Torch-Pruning's deep errors on unsupported graphs into one ``ConfigError`` line."""
    try:
        yield
    except (IndexError, RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"prune: Torch-Pruning cannot prune this {type(model).__name__} ({type(e).__name__}: {first}); "
            f"blocks that split channels with chunk/split break its dependency graph (the ultralytics adapter "
            f"replaces C2f/C3k2/C2PSA by split-free blocks; other models need the same). The model was left "
            f"partially pruned."
        ) from e


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def count_macs_params(model: nn.Module, imgsz: int) -> tuple[int, int]:
    """``(MACs, params)`` of one forward pass at ``[1, 3, imgsz, imgsz]`` (Torch-Pruning's op counter).

    MACs count a multiply-add once (``mtkd.eval.speed.count_flops`` reports FLOPs, about twice as many)."""
    was_training = model.training
    example = torch.zeros(1, 3, imgsz, imgsz, device=_device(model))
    macs, params = tp.utils.count_ops_and_params(FlatOutputs(model).eval(), example)
    model.train(was_training)
    return int(macs), int(params)


def prune_model(
    model: nn.Module,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    importance: str = "magnitude",
    global_pruning: bool = False,
    imgsz: int = 128,
    iterative_steps: int = 1,
    round_to: int | None = None,
    loss_fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Prune ``model`` (a ``MultiTaskAdapter``) in place and return it.

    Args:
        ratio: channel pruning ratio in (0, 1) (exclusive with ``target_macs``).
        target_macs: prune until MACs at ``[1, 3, imgsz, imgsz]`` are <= this (up to a ratio of 0.9).
        importance: ``"magnitude"``, ``"bn_scale"`` or ``"taylor"`` (see the module docstring).
        global_pruning: rank channels across layers instead of the same ratio per layer.
        imgsz: square size of the random example input ``[1, 3, imgsz, imgsz]`` used to trace the graph.
        iterative_steps: reach ``ratio`` in this many steps (importance is re-estimated at each).
        round_to: keep channel counts multiples of this (e.g. 8 for tensor cores).
        loss_fn: ``loss_fn(model, images [2, 3, imgsz, imgsz]) -> scalar`` for Taylor importance.
        seed: seed of the random example/Taylor inputs.

    Raises ``ConfigError`` on bad arguments or an unreachable ``target_macs``.
    """
    if (ratio is None) == (target_macs is None):
        raise ConfigError("prune: give exactly one of ratio or target_macs")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio: expected a channel pruning ratio in (0, 1), got {ratio}")
    if target_macs is not None and target_macs <= 0:
        raise ConfigError(f"target_macs: expected a positive number of MACs, got {target_macs}")
    if iterative_steps < 1:
        raise ConfigError(f"iterative_steps: expected a positive integer, got {iterative_steps}")
    if imgsz < 32 or imgsz % 32:
        raise ConfigError(f"imgsz: expected a positive multiple of 32, got {imgsz}")
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to: expected a positive integer, got {round_to}")
    imp = _importance(importance)

    context = model.pruning() if callable(getattr(model, "pruning", None)) else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with context:
            _prune(model, imp, ratio, target_macs, importance, global_pruning, imgsz, iterative_steps, round_to,
                   loss_fn, seed)  # fmt: skip
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return model


def _prune(
    model: nn.Module,
    imp: tp.importance.Importance,
    ratio: float | None,
    target_macs: float | None,
    importance: str,
    global_pruning: bool,
    imgsz: int,
    iterative_steps: int,
    round_to: int | None,
    loss_fn: Callable[[nn.Module, Tensor], Tensor] | None,
    seed: int,
) -> None:
    """``prune_model``'s work, in eval mode, inside the adapter's ``pruning()`` context."""
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    example = torch.randn(1, 3, imgsz, imgsz, generator=gen).to(device)
    wrapper = TracedOutputs(model)
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in wrapper(example)]
    macs0, _ = count_macs_params(model, imgsz)
    if target_macs is not None and macs0 <= target_macs:
        return
    ignored = ignored_layers_of(model, example)
    unmapped = unmapped_layers(model, example, ignored)
    if unmapped:
        raise ConfigError(
            f"prune: {len(unmapped)} layers of this {type(model).__name__} feed none of the outputs its adapter "
            f"maps (e.g. {', '.join(unmapped[:3])}): Torch-Pruning would prune the channels they read but not "
            f"them, breaking the model; map that branch to an output or remove it before pruning"
        )

    steps = iterative_steps if target_macs is None else max(iterative_steps, TARGET_STEPS)
    pruner_cls = tp.pruner.BNScalePruner if importance == "bn_scale" else tp.pruner.MetaPruner
    taylor_images = torch.rand(2, 3, imgsz, imgsz, generator=gen).to(device)
    macs = macs0
    with _torch_pruning_errors(model):
        pruner = pruner_cls(
            wrapper,
            example,
            importance=imp,
            global_pruning=global_pruning,
            pruning_ratio=ratio if ratio is not None else MAX_TARGET_RATIO,
            iterative_steps=steps,
            ignored_layers=ignored,
            round_to=round_to,
        )
    for _ in range(steps):
        if importance == "taylor":
            model.zero_grad(set_to_none=True)
            (loss_fn or _surrogate_loss)(model, taylor_images).backward()
            for p in model.parameters():  # layers the loss does not reach (frozen, unused): no gradient
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        with _torch_pruning_errors(model):
            pruner.step()
        if target_macs is not None:
            macs, _ = count_macs_params(model, imgsz)
            if macs <= target_macs:
                break
    if target_macs is not None and macs > target_macs:
        raise ConfigError(
            f"target_macs: {target_macs:.4g} not reachable; pruning {MAX_TARGET_RATIO:.0%} of the channels "
            f"leaves {macs:.4g} MACs at imgsz {imgsz}"
        )
    with torch.no_grad():
        after = [tuple(t.shape) for t in wrapper(example)]
    if after != shapes:  # an output layer was pruned: a bug in ignored-layer detection, never user error
        raise RuntimeError(f"pruning changed output shapes {shapes} -> {after}")


def _parse_count(text: str) -> float:
    """``"1.5G"`` -> 1.5e9 (suffixes K, M, G, T; case-insensitive)."""
    mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    t = text.strip().upper()
    try:
        return float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise ConfigError(f"--target-macs: expected a number like 2.5e8 or 250M, got {text!r}") from None


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3f}{unit}"
    return f"{n:.0f}"


def _parser() -> argparse.ArgumentParser:
    from mtkd.models.trust import add_trust_code_argument

    p = argparse.ArgumentParser(
        prog="mtkd prune",
        description="Structured pruning with Torch-Pruning; writes a safe checkpoint with the pruned widths.",
    )
    p.add_argument("--weights", required=True, help="safe mtkd checkpoint of the model to prune")
    p.add_argument("--out", required=True, help="pruned safe checkpoint to write")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ratio", type=float, help="channel pruning ratio in (0, 1)")
    g.add_argument("--target-macs", help="prune until MACs at --imgsz <= this (e.g. 2.5e8 or 250M)")
    p.add_argument("--importance", choices=IMPORTANCES, default="magnitude", help="channel importance")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="global instead of uniform")
    p.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="image size for tracing and MACs (default: checkpoint config imgsz, else 640)",
    )
    p.add_argument("--iterative-steps", type=int, default=1, help="reach --ratio in this many steps")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    p.add_argument("--seed", type=int, default=0)
    add_trust_code_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """``mtkd prune --weights W --ratio R --out pruned.pt``; prints params and MACs before/after."""
    args = _parser().parse_args(argv)
    from mtkd.checkpoint import load_checkpoint, save_model
    from mtkd.models import load_model
    from mtkd.models.trust import trust_from_args

    if args.ratio is not None and not 0.0 < args.ratio < 1.0:
        raise ConfigError(f"--ratio: expected a channel pruning ratio in (0, 1), got {args.ratio}")
    target = _parse_count(args.target_macs) if args.target_macs is not None else None
    ckpt = load_checkpoint(args.weights)
    config = ckpt.get("config") or {}
    imgsz = (
        args.imgsz
        if args.imgsz is not None
        else (int(config["imgsz"]) if isinstance(config.get("imgsz"), int) else 640)
    )
    model = load_model(ckpt, trust_code=trust_from_args(args.trust_code), where=str(args.weights))
    macs0, params0 = count_macs_params(model, imgsz)
    prune_model(
        model,
        ratio=args.ratio,
        target_macs=target,
        importance=args.importance,
        global_pruning=args.global_pruning,
        imgsz=imgsz,
        iterative_steps=args.iterative_steps,
        round_to=args.round_to,
        seed=args.seed,
    )
    macs1, params1 = count_macs_params(model, imgsz)
    record = {
        "source": str(args.weights),
        "ratio": args.ratio,
        "target_macs": target,
        "importance": args.importance,
        "global": args.global_pruning,
        "imgsz": imgsz,
        "iterative_steps": args.iterative_steps,
        "params_before": params0,
        "params_after": params1,
        "macs_before": macs0,
        "macs_after": macs1,
    }
    metrics = {**(ckpt.get("metrics") or {}), "prune": record}
    save_model(args.out, model, config=config, metrics=metrics)
    print(f"{'':8}{'params':>12}{f'MACs@{imgsz}':>14}")
    print(f"{'before':8}{_fmt(params0):>12}{_fmt(macs0):>14}")
    print(f"{'after':8}{_fmt(params1):>12}{_fmt(macs1):>14}")
    print(f"{'kept':8}{params1 / params0:>12.1%}{macs1 / max(macs0, 1):>14.1%}")
    print(f"saved {args.out}")
    return 0
