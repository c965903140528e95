"""Feature distillation on named feature maps (``MultiTaskOutput.features``).

Losses (``kind`` names in brackets); each takes ``s [B, C_s, H_s, W_s]`` and ``t [B, C_t, H_t, W_t]`` and
returns a 0-d float32 tensor. The teacher map is detached inside.

=========================  ==============  ==================  ==========================================
loss                       connector       spatial resize      reduction
=========================  ==============  ==================  ==========================================
``FitNetLoss`` (fitnet)    yes (1x1 conv)  yes                 MSE, mean over all elements
``ATLoss`` (at)            no              yes                 mean of squared diff of attention maps
``SPLoss`` (sp)            no              no                  ``||G_s - G_t||_F^2 / B^2``
``CCLoss`` (cc)            no              no                  ``||K_s - K_t||_F^2 / B^2``
``CWDFeatureLoss`` (cwd)   yes (1x1 conv)  yes                 ``T^2 * KL``, mean over channels and batch
=========================  ==============  ==================  ==========================================

"Connector" losses compare channels one to one, so the student map goes through a ``Connector`` (identity when
``C_s == C_t``); the others compare per-sample or per-batch summaries that do not depend on the channel count.
Where a spatial match is needed the (connected) student map is resized bilinearly to the teacher's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.config import FeatKDConfig
from mtkd.errors import CompatibilityError, ConfigError
from mtkd.losses.connectors import Connector
from mtkd.losses.logit_kd import channel_wise_kl, resize_like
from mtkd.utils.schedules import did_you_mean


class FitNetLoss(nn.Module):
    """FitNet hint (Romero et al. 2015): ``mean((s - t)^2)`` after the connector and resize."""

    uses_connector = True
    needs_same_size = True

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return F.mse_loss(s.float(), t.detach().float())


class ATLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis 2017).

    Attention map per sample: ``a = normalize_L2(sum_c |f_c|^p)`` flattened over ``H*W`` (p = 2).
    Loss: ``mean over (B, H*W) of (a_s - a_t)^2``, as in the authors' code (``(at(x) - at(y)).pow(2).mean()``).
    """

    uses_connector = False
    needs_same_size = True

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = float(p)

    def attention(self, f: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, H*W]`` L2-normalized attention map."""
        return F.normalize(f.float().abs().pow(self.p).sum(dim=1).flatten(1), dim=1)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return (self.attention(s) - self.attention(t.detach())).pow(2).mean()


class SPLoss(nn.Module):
    """Similarity-preserving KD (Tung & Mori 2019).

    ``G = normalize_rows(F F^T)`` with ``F = f.reshape(B, -1)`` (a ``[B, B]`` batch similarity matrix);
    loss ``||G_s - G_t||_F^2 / B^2``. Channels and spatial sizes may differ between student and teacher.
    """

    uses_connector = False
    needs_same_size = False

    @staticmethod
    def similarity(f: Tensor) -> Tensor:
        with torch.autocast(f.device.type, enabled=False):  # fp32 matmul even under autocast
            flat = f.float().flatten(1)
            return F.normalize(flat @ flat.t(), dim=1)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        g_s, g_t = self.similarity(s), self.similarity(t.detach())
        return (g_s - g_t).pow(2).sum() / s.shape[0] ** 2


class CCLoss(nn.Module):
    """Correlation congruence (Peng et al. 2019) on global-average-pooled, L2-normalized embeddings.

    ``e = normalize(avgpool(f))  [B, C]``; correlation matrix ``K [B, B]`` with
        - ``kernel="gaussian"`` (default): the Gaussian RBF ``exp(-gamma * ||e_i - e_j||^2)``
          approximated by its ``order``-th Taylor expansion, as in the paper:
          ``exp(-2 gamma) * sum_{p=0..order} (2 gamma)^p / p! * (e_i . e_j)^p``;
        - ``kernel="bilinear"``: ``K = e e^T``.
    Loss ``||K_s - K_t||_F^2 / B^2``. Channel counts may differ (no connector).
    """

    uses_connector = False
    needs_same_size = False

    def __init__(self, kernel: str = "gaussian", gamma: float = 0.4, order: int = 2) -> None:
        super().__init__()
        self.kernel, self.gamma, self.order = kernel, float(gamma), int(order)

    def correlation(self, f: Tensor) -> Tensor:
        e = F.normalize(f.float().mean(dim=(2, 3)), dim=1)
        with torch.autocast(f.device.type, enabled=False):  # fp32 matmul even under autocast
            dot = e @ e.t()
        if self.kernel == "bilinear":
            return dot
        k = torch.ones_like(dot)
        for p in range(1, self.order + 1):
            k = k + (2 * self.gamma) ** p / math.factorial(p) * dot.pow(p)
        return k * math.exp(-2 * self.gamma)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        k_s, k_t = self.correlation(s), self.correlation(t.detach())
        return (k_s - k_t).pow(2).sum() / s.shape[0] ** 2


class CWDFeatureLoss(nn.Module):
    """Channel-wise distillation (Shu et al. 2021) on feature maps; see ``logit_kd.channel_wise_kl``.

    ``temperature`` is fixed per loss (the paper uses 4 on detection features), not the logit schedule.
    """

    uses_connector = True
    needs_same_size = True

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return channel_wise_kl(s, t, temperature=self.temperature)


FEATURE_LOSSES: dict[str, type[nn.Module]] = {
    "fitnet": FitNetLoss,
    "at": ATLoss,
    "sp": SPLoss,
    "cc": CCLoss,
    "cwd": CWDFeatureLoss,
}


def _module_key(name: str) -> str:
    """Feature names may be module paths (``model.10``); ``nn.ModuleDict`` keys cannot contain dots."""
    return name.replace(".", "_")


class FeatureDistiller(nn.Module):
    """Feature KD over several named taps with one loss kind, owning the connectors.

    Args (typed values of the ``distill.feat_kd`` config section, validated by ``mtkd.config`` and only there;
    defaults from there):
        names: feature names to distill (keys of ``MultiTaskOutput.features``), e.g. ``["p3", "p4", "p5"]``.
        kind: ``"fitnet" | "at" | "sp" | "cc" | "cwd"`` (see module docstring for which use connectors).
        weight: the ``feat_weight`` of the combination; stored here, applied by ``DistillLoss``.
        student_channels / teacher_channels: ``{name: C}``; when both are given, ``build`` runs at once.
        connector_bn: BatchNorm after each connector conv.
        **loss_kwargs: passed to the loss (``p`` for AT, ``kernel/gamma/order`` for CC, ``temperature`` for CWD).

    Connector losses need ``build(student_channels, teacher_channels)`` (or the ``from_features`` builder)
    **before the optimizer is created**, so the connector parameters are optimized; calling ``forward`` on an
    unbuilt distiller raises instead of silently creating untrained parameters.
    """

    def __init__(
        self,
        *,
        names: Iterable[str],
        kind: str = FeatKDConfig.kind,
        weight: float = FeatKDConfig.weight,
        student_channels: Mapping[str, int] | None = None,
        teacher_channels: Mapping[str, int] | None = None,
        connector_bn: bool = FeatKDConfig.connector_bn,
        **loss_kwargs: float | int | str,
    ) -> None:
        super().__init__()
        self.names = [str(n) for n in ([names] if isinstance(names, str) else names)]
        self.kind, self.weight, self.connector_bn = kind, float(weight), bool(connector_bn)
        self.loss = FEATURE_LOSSES[kind](**loss_kwargs)
        self.connectors = nn.ModuleDict()
        self.built = not self.uses_connector
        if student_channels is not None and teacher_channels is not None:
            self.build(student_channels, teacher_channels)

    @property
    def uses_connector(self) -> bool:
        return bool(self.loss.uses_connector)

    def build(
        self, student_channels: Mapping[str, int], teacher_channels: Mapping[str, int]
    ) -> FeatureDistiller:
        """Create the connectors (1x1 conv only where channels differ, identity otherwise); returns self."""
        for side, chans in (("student", student_channels), ("teacher", teacher_channels)):
            missing = [n for n in self.names if n not in chans]
            if missing:
                raise ConfigError(
                    f"distill.feat_kd.names: {missing} not among the {side} features {sorted(chans)}"
                    + did_you_mean(missing[0], [str(k) for k in chans])
                )
        if self.uses_connector:
            self.connectors = nn.ModuleDict(
                {
                    _module_key(n): Connector(
                        int(student_channels[n]), int(teacher_channels[n]), bn=self.connector_bn
                    )
                    for n in self.names
                }
            )
        self.built = True
        return self

    @classmethod
    def from_features(
        cls, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor], **kwargs
    ) -> FeatureDistiller:
        """Build with channels read from one batch of features ``{name: [B, C, H, W]}``."""
        dist = cls(**kwargs)
        return dist.build(
            {n: int(f.shape[1]) for n, f in s_feats.items()}, {n: int(f.shape[1]) for n, f in t_feats.items()}
        )

    def forward(self, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted feature KD.

        Returns:
            ``feat_kd``: mean over ``names`` of the per-name losses, and ``feat_kd_<name>`` for each name
            (0-d float32 tensors). Multiply ``feat_kd`` by ``weight`` to get its share of the total loss.
        """
        if not self.built:
            raise RuntimeError(
                "FeatureDistiller is not built: call build(student_channels, teacher_channels) or "
                "FeatureDistiller.from_features(...) before creating the optimizer"
            )
        out: dict[str, Tensor] = {}
        for name in self.names:
            for side, feats in (("student", s_feats), ("teacher", t_feats)):
                if name not in feats:
                    raise ConfigError(
                        f"distill.feat_kd.names: {name!r} not among the {side} features {sorted(feats)}"
                        + did_you_mean(name, [str(k) for k in feats])
                    )
            s, t = s_feats[name], t_feats[name].detach()
            if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0]:
                raise CompatibilityError(
                    f"feature {name!r}: expected [B, C, H, W] maps with equal B, got student "
                    f"{tuple(s.shape)} and teacher {tuple(t.shape)}"
                )
            if self.uses_connector:
                conn = self.connectors[_module_key(name)]
                if s.shape[1] != conn.in_channels or t.shape[1] != conn.out_channels:
                    raise CompatibilityError(
                        f"feature {name!r}: connector built for {conn.in_channels} -> {conn.out_channels} "
                        f"channels, got student {tuple(s.shape)} and teacher {tuple(t.shape)}"
                    )
                s = conn(s)
            if self.loss.needs_same_size:
                s = resize_like(s, tuple(t.shape[-2:]))
            out[f"feat_kd_{name}"] = self.loss(s, t)
        out["feat_kd"] = torch.stack([out[f"feat_kd_{n}"] for n in self.names]).mean()
        return out
