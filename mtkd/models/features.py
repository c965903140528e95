"""Named feature taps: capture intermediate outputs by module path with forward hooks (torchdistill style).

An adapter declares stable short names (``{"p3": "neck.p3", ...}``) and wraps its forward pass::

    taps = FeatureTaps(self, {"p3": "neck.p3", "p4": "neck.p4"})
    with taps.capture(features) as feats:      # features: the names the caller asked for
        ...run the model...
    return MultiTaskOutput(seg=..., det=..., features=feats)

Hooks exist only inside the ``with`` block (removed even when the forward raises), so nothing leaks between
calls. Captured tensors are the modules' outputs themselves (still attached to the graph when grads are on, so
feature-distillation losses can backpropagate into the student). A name that is not a short name may be a full
module path (``"backbone.csp4"``); anything else raises ``ConfigError`` listing the available short names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from mtkd.errors import ConfigError


def _first_tensor(out: Any) -> Tensor:
    """The tensor a module produced (the first one, for modules returning tuples/lists/dicts)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    if isinstance(out, Mapping) and out:
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"feature tap: module output of type {type(out).__name__} holds no tensor")


class FeatureTaps:
    """Forward hooks on ``module``'s submodules, addressed by short name or module path.

    Args:
        module: the model whose submodules are tapped.
        taps: ``{short_name: module_path}``, e.g. ``{"p3": "neck.p3"}`` (``""`` is the module itself).
    """

    def __init__(self, module: nn.Module, taps: Mapping[str, str]) -> None:
        self.module = module
        self.taps = dict(taps)

    @property
    def names(self) -> list[str]:
        """The short names, in declaration order."""
        return list(self.taps)

    def resolve(self, name: str) -> tuple[str, nn.Module]:
        """Module path and module of a short name or a full module path; ``ConfigError`` if neither exists."""
        path = self.taps.get(name, name)
        try:
            return path, self.module.get_submodule(path)
        except AttributeError:
            avail = ", ".join(self.names) or "(none)"
            raise ConfigError(
                f"features: unknown feature name {name!r}; available short names: {avail} "
                f"(or a module path of {type(self.module).__name__})"
            ) from None

    @contextlib.contextmanager
    def capture(self, names: Iterable[str] = ()) -> Iterator[dict[str, Tensor]]:
        """Register hooks for ``names`` and yield the dict they fill (``{name: [B, C, H, W]}``) during the block.

        If a module runs more than once inside the block, the last output is kept. Empty ``names``: no hooks.
        """
        names = list(dict.fromkeys(names))
        feats: dict[str, Tensor] = {}
        resolved = [(n, *self.resolve(n)) for n in names]  # validate all names before touching the model
        handles = []

        def hook_for(name: str):
            def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                feats[name] = _first_tensor(out)

            return hook

        try:
            for name, _path, mod in resolved:
                handles.append(mod.register_forward_hook(hook_for(name)))
            yield feats
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in feats]
        if missing:
            raise ConfigError(f"features: {missing} were requested but their modules did not run in forward")
