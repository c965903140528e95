"""segmentation-models-pytorch adapter: an SMP model as a seg-only model (or the seg member of ``composite``).

Config::

    adapter: smp
    arch: Unet                     # any smp.create_model architecture (Unet, FPN, DeepLabV3Plus, ...)
    encoder_name: tu-resnet10t     # any SMP encoder that builds offline
    encoder_weights: null          # must stay null: mtkd never downloads; load weights from 'state_dict'
    kwargs: {encoder_depth: 3, decoder_channels: [32, 16, 8]}   # more smp.create_model arguments
    state_dict: weights/unet.pt    # optional: torch.save(model.state_dict()) of the same SMP model
    input_mean: [0.485, 0.456, 0.406]   # optional input normalization (images are [0, 1]); SMP encoders
    input_std: [0.229, 0.224, 0.225]    # were usually trained with these ImageNet statistics

``forward`` returns ``seg`` logits ``[B, nc_seg, H, W]`` at input resolution (H, W multiples of
``2 ** encoder_depth``) and ``det=None``. Feature taps: ``enc`` (deepest encoder stage), ``dec`` (decoder output),
or any module path of the adapter (e.g. ``model.encoder.layer2``).

Note: SMP's own encoders keep their unused deeper stages when ``encoder_depth < 5`` (those parameters never get a
gradient); timm-universal encoders (``tu-*``) drop them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtkd.errors import ConfigError
from mtkd.models.adapters._common import InputNorm, check_rebuildable, load_state_dict_file, resolve_names
from mtkd.models.adapters.base import DetSpec, MultiTaskAdapter
from mtkd.models.features import FeatureTaps
from mtkd.models.outputs import MultiTaskOutput
from mtkd.models.trust import TrustCode

_WHERE = "smp adapter"
_CONFIG_KEYS = (
    "adapter", "arch", "encoder_name", "encoder_weights", "kwargs", "state_dict", "state_dict_key",
    "input_mean", "input_std", "det_names", "seg_names", "head",
)  # fmt: skip
_TAPS = {"enc": "model.encoder", "dec": "model.decoder"}


def create_smp_model(arch: str, encoder_name: str, nc_seg: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """``smp.create_model(arch, encoder_name, encoder_weights=None, classes=nc_seg, **kwargs)`` with errors
    that name the field."""
    import segmentation_models_pytorch as smp

    bad = {"encoder_weights", "classes", "in_channels", "aux_params"} & set(kwargs)
    if bad:
        raise ConfigError(
            f"{_WHERE}: field 'kwargs' must not set {sorted(bad)} (encoder_weights is always None, classes comes from "
            f"seg_names, inputs are RGB, and an auxiliary classification head would never be trained)"
        )
    try:
        return smp.create_model(
            arch=arch, encoder_name=encoder_name, encoder_weights=None, classes=nc_seg, **kwargs
        )
    except Exception as e:  # KeyError for unknown arch/encoder, TypeError for bad kwargs
        raise ConfigError(
            f"{_WHERE}: smp.create_model(arch={arch!r}, encoder_name={encoder_name!r}, **kwargs={dict(kwargs)!r}) "
            f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


class SmpAdapter(MultiTaskAdapter):
    """Seg-only adapter around an SMP model built by ``create_smp_model``.

    Args:
        arch, encoder_name, kwargs: the ``smp.create_model`` recipe (kept for ``arch()``).
        seg_names: seg class names (``classes = len(seg_names)``).
        model: an already-built SMP model with that recipe (default: build it, random init).
        input_mean, input_std: optional per-channel normalization of the ``[0, 1]`` input.
    """

    adapter_name = "smp"
    adapter_label = _WHERE
    config_keys = _CONFIG_KEYS  # arch_keys: the same (an arch is a config without weights)

    def __init__(
        self,
        *,
        arch: str,
        encoder_name: str,
        seg_names: Sequence[str],
        kwargs: Mapping[str, Any] | None = None,
        model: nn.Module | None = None,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(det_names=(), seg_names=seg_names)
        if not self.seg_names:
            raise ConfigError(f"{_WHERE}: seg_names (or nc_seg) is required")
        self.recipe = {"arch": arch, "encoder_name": encoder_name, "kwargs": dict(kwargs or {})}
        self.model = (
            model if model is not None else create_smp_model(arch, encoder_name, self.nc_seg, kwargs or {})
        )
        self.norm = InputNorm(input_mean, input_std, where=_WHERE)

    def forward(self, images: Tensor, features: Sequence[str] = ()) -> MultiTaskOutput:
        """images ``[B, 3, H, W]`` in [0, 1] → seg logits ``[B, nc_seg, H, W]``."""
        with FeatureTaps(self, _TAPS).capture(features) as feats:
            seg = self.model(self.norm(images))
        if seg.shape[1] != self.nc_seg:
            raise ConfigError(
                f"{_WHERE}: the SMP model emits {seg.shape[1]} classes, seg_names has {self.nc_seg}"
            )
        return MultiTaskOutput(seg=seg, det=None, features=feats)

    def det_spec(self) -> DetSpec | None:
        return None

    def feature_names(self) -> list[str]:
        return list(_TAPS)

    def ignored_layers(self) -> list[nn.Module]:
        return [self.model.segmentation_head]

    def arch(self) -> dict[str, Any]:
        """The recipe + names + normalization; ``CheckpointError`` if the live widths differ (pruned)."""
        arch = {
            "adapter": self.adapter_name,
            **self.recipe,
            "seg_names": list(self.seg_names),
            **self.norm.arch(),
        }
        check_rebuildable(
            self,
            lambda: type(self).from_arch(arch),
            what=f"{_WHERE} ({self.recipe['arch']}/{self.recipe['encoder_name']})",
        )
        return arch

    # ---------------------------------------------------------------- construction (base.MultiTaskAdapter)
    @classmethod
    def _from_config(
        cls,
        config: Mapping[str, Any],
        *,
        nc_det: int | None,
        nc_seg: int | None,
        det_names: Sequence[str] | None,
        seg_names: Sequence[str] | None,
    ) -> SmpAdapter:
        """Build from a config dict (module docstring). Detection classes and ``head`` do not apply (seg-only)."""
        if config.get("encoder_weights") is not None:
            raise ConfigError(
                f"{_WHERE}: field 'encoder_weights' = {config['encoder_weights']!r}; mtkd never downloads weights: "
                f"set encoder_weights: null and load trained weights from a local file with 'state_dict: path.pt'"
            )
        for key in ("arch", "encoder_name"):
            if not isinstance(config.get(key), str):
                raise ConfigError(
                    f"{_WHERE}: field {key!r} is required (a string, e.g. arch: Unet, encoder_name: resnet18)"
                )
        kwargs = config.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ConfigError(
                f"{_WHERE}: field 'kwargs' = {kwargs!r}; expected a dict of smp.create_model arguments"
            )
        adapter = cls(
            arch=config["arch"],
            encoder_name=config["encoder_name"],
            kwargs=kwargs,
            seg_names=resolve_names(seg_names, nc_seg, "seg", _WHERE),
            input_mean=config.get("input_mean"),
            input_std=config.get("input_std"),
        )
        if config.get("state_dict"):
            load_state_dict_file(adapter.model, config["state_dict"], config.get("state_dict_key"))
        return adapter

    @classmethod
    def _from_arch(cls, arch: Mapping[str, Any], *, trust_code: TrustCode, where: str) -> SmpAdapter:
        """Inverse of ``arch()`` (random weights; the checkpoint's state_dict follows). Imports nothing the arch
        names (``trust_code`` is accepted for the common signature); ``state_dict``/``head`` are ignored."""
        return cls.from_config({k: v for k, v in arch.items() if k not in ("state_dict", "head")})


#: the protocol class ``mtkd.models.build`` may dispatch to
ADAPTER = SmpAdapter


def build(
    config: Mapping[str, Any],
    nc_det: int | None = None,
    nc_seg: int | None = None,
    det_names: Sequence[str] | None = None,
    seg_names: Sequence[str] | None = None,
) -> SmpAdapter:
    """``SmpAdapter.from_config`` (kept for ``mtkd.models.build``'s module dispatch)."""
    return SmpAdapter.from_config(config, nc_det, nc_seg, det_names, seg_names)


def from_arch(arch: Mapping[str, Any], *, trust_code: TrustCode = False, where: str = "arch") -> SmpAdapter:
    """``SmpAdapter.from_arch`` (imports nothing the arch names)."""
    return SmpAdapter.from_arch(arch, trust_code=trust_code, where=where)
