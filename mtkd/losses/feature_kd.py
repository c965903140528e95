"""Feature distillation on named feature maps (``MultiTaskOutput.features``).

Losses (``kind`` names in brackets); each takes ``s [B, C_s, H_s, W_s]`` and ``t [B, C_t, H_t, W_t]`` and
returns a 0-d float32 tensor. The teacher map is detached inside.

==========================  ================  ==============  ==========================================
loss                        connector         spatial resize  reduction
==========================  ================  ==============  ==========================================
``FitNetLoss`` (fitnet)     yes (1x1 conv)    yes             MSE, mean over all elements
``ATLoss`` (at)             no                yes             mean of squared diff of attention maps
``SPLoss`` (sp)             no                no              ``||G_s - G_t||_F^2 / B^2``
``CCLoss`` (cc)             no                no              ``||K_s - K_t||_F^2 / B^2``
``CWDFeatureLoss`` (cwd)    yes (1x1 conv)    yes             ``T^2 * KL``, mean over channels and batch
``PKDLoss`` (pkd)           yes (1x1 conv)    yes             MSE / 2 of per-channel standardized maps
``ScoreL2Loss`` (score_l2)  yes (1x1 conv)    yes             squared error weighted by teacher confidence
``MGDLoss`` (mgd)           ``MGDGenerator``  yes             MSE of the generated map, mean over elements
==========================  ================  ==============  ==========================================

"Connector" losses compare channels one to one, so the student map goes through a ``Connector`` (identity when
``C_s == C_t``; a loss may make its own student-side module instead, ``make_connector``, as MGD does); the others
compare per-sample or per-batch summaries that do not depend on the channel count. Where a spatial match is
needed the (connected) student map is resized bilinearly to the teacher's size. ``score_l2`` also needs the
teacher's detection output (``FeatureDistiller.forward(..., t_det=...)``, ``mtkd.losses.confidence``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtkd.config import FeatKDConfig
from mtkd.errors import CompatibilityError, ConfigError
from mtkd.losses.confidence import confidence_at, confidence_maps
from mtkd.losses.connectors import Connector
from mtkd.losses.logit_kd import channel_wise_kl, resize_like
from mtkd.models.outputs import DetOutput
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


def _standardize(f: Tensor) -> Tensor:
    """Per channel, over ``(B, H, W)``: ``(f - mean) / (std + 1e-6)`` (unbiased std), as in PKD's code."""
    mean = f.mean(dim=(0, 2, 3), keepdim=True)
    std = f.std(dim=(0, 2, 3), keepdim=True)
    return (f - mean) / (std + 1e-6)


class PKDLoss(nn.Module):
    """PKD (Cao et al. 2022, "PKD: General Distillation Framework for Object Detectors via Pearson Correlation").

    Both maps ``[B, C, H, W]`` (student after the connector and resize) are standardized per channel over the
    batch and positions (``_standardize``), then ``loss = MSE / 2``, which equals ``(n-1)/n * mean_c(1 - r_c)``
    with ``r_c`` the Pearson correlation of channel ``c`` over its ``n = B*H*W`` values: the student is free in
    the per-channel scale and offset of its features (no magnitude gap to close), only their pattern is imitated.
    """

    uses_connector = True
    needs_same_size = True

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return F.mse_loss(_standardize(s.float()), _standardize(t.detach().float())) / 2


class ScoreL2Loss(nn.Module):
    """Teacher-confidence-weighted feature L2, Ultralytics' feature KD (``DistillationModel.loss_sl2``).

    ``loss = sum_{b,c,y,x} w[b,y,x] * (s - t)^2 / (C * sum_{b,y,x} w + 1e-9)``: the squared error of every
    location, weighted by the teacher's detection confidence there (``mtkd.losses.confidence``: max class
    probability, times objectness for anchor heads), so the student imitates the teacher where it sees objects
    rather than on the background that fills most of a road scene. Like Ultralytics we use the confidence of the
    detection level at the tap's resolution, the ``1e-9`` and a (1x1 conv) projector where channels differ.
    Unlike it: one loss per tap averaged over taps by ``FeatureDistiller`` (Ultralytics sums its levels and scales
    by ``dis`` and the batch size, because its task losses are batch sums; mtkd's are means: set
    ``distill.feat_kd.weight``), and the anchor-head score includes the objectness.

    ``forward(s [B, C, H, W], t [B, C, H, W], weight [B, H, W])``; ``weight`` is detached.
    """

    uses_connector = True
    needs_same_size = True
    needs_teacher_confidence = True

    def forward(self, s: Tensor, t: Tensor, weight: Tensor) -> Tensor:
        if weight.shape != (s.shape[0], *s.shape[-2:]):
            raise CompatibilityError(
                f"confidence {tuple(weight.shape)} does not fit the features {tuple(s.shape)}"
            )
        w = weight.detach().float()[:, None]  # [B, 1, H, W]
        se = (s.float() - t.detach().float()).pow(2)
        return (se * w).sum() / (w.sum() * s.shape[1] + 1e-9)


class MGDGenerator(nn.Module):
    """MGD's student side: ``align`` (1x1 conv where ``C_s != C_t``) -> random spatial mask -> ``generation``
    (3x3 conv, ReLU, 3x3 conv at the teacher's width). ``[B, C_s, H, W] -> [B, C_t, H, W]``.

    Each call masks every position (all channels) with probability ``mask_ratio``, drawing from the global torch
    RNG on the feature's device (the trainer's seeding and checkpointed RNG state keep runs reproducible).
    """

    def __init__(self, in_channels: int, out_channels: int, *, mask_ratio: float) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.mask_ratio = int(in_channels), int(out_channels), mask_ratio
        c = self.out_channels
        self.align = nn.Identity() if c == in_channels else nn.Conv2d(in_channels, c, 1)
        self.generation = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.align(x)
        b, _, h, w = x.shape
        keep = torch.rand((b, 1, h, w), device=x.device) <= 1.0 - self.mask_ratio  # as mat > 1 - lambda -> 0
        return self.generation(x * keep.to(x.dtype))


class MGDLoss(nn.Module):
    """Masked generative distillation (Yang et al. 2022): the student's masked map must *generate* the teacher's.

    The student map goes through its ``MGDGenerator`` (``make_connector``; ``connector_bn`` does not apply), then
    ``loss = mean((G(mask(align(s))) - t)^2)``. The paper sums over ``C, H, W`` and scales by ``alpha_mgd``
    (2e-5): that is this mean times ``C * H * W * alpha_mgd``; here the scale is ``distill.feat_kd.weight``.
    ``mask_ratio``: the paper's lambda (0.65 for detection, 0.75 for segmentation).
    """

    uses_connector = True
    needs_same_size = True

    def __init__(self, mask_ratio: float = 0.65) -> None:
        super().__init__()
        self.mask_ratio = float(mask_ratio)

    def make_connector(self, in_channels: int, out_channels: int, *, bn: bool) -> MGDGenerator:
        return MGDGenerator(in_channels, out_channels, mask_ratio=self.mask_ratio)

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        return F.mse_loss(s.float(), t.detach().float())


FEATURE_LOSSES: dict[str, type[nn.Module]] = {
    "fitnet": FitNetLoss,
    "at": ATLoss,
    "sp": SPLoss,
    "cc": CCLoss,
    "cwd": CWDFeatureLoss,
    "pkd": PKDLoss,
    "score_l2": ScoreL2Loss,
    "mgd": MGDLoss,
}


def _module_key(name: str) -> str:
    """Feature names may be module paths (``model.10``); ``nn.ModuleDict`` keys cannot contain dots."""
    return name.replace(".", "_")


class FeatureDistiller(nn.Module):
    """Feature KD over several named taps with one loss kind, owning the connectors.

    Args (typed values of the ``distill.feat_kd`` config section, validated by ``mtkd.config`` and only there;
    defaults from there):
        names: feature names to distill (keys of ``MultiTaskOutput.features``), e.g. ``["p3", "p4", "p5"]``.
        kind: a key of ``FEATURE_LOSSES`` (see the module docstring for which use connectors).
        weight: the ``feat_weight`` of the combination; stored here, applied by ``DistillLoss``.
        student_channels / teacher_channels: ``{name: C}`` keyed by each side's tap names; when both are given,
            ``build`` runs at once.
        teacher_names: ``{student tap: teacher tap}`` (config ``distill.feat_kd.teacher_names``) for taps named
            differently in the teacher, e.g. ``{"p3": "det.p3"}`` for a composite teacher (its taps are prefixed
            with the member's name); an unlisted name is the same in both.
        connector_bn: BatchNorm after each connector conv.
        **loss_kwargs: passed to the loss (``p`` for AT, ``kernel/gamma/order`` for CC, ``temperature`` for CWD,
            ``mask_ratio`` for MGD).

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
        teacher_names: Mapping[str, str] | None = None,
        **loss_kwargs: float | int | str,
    ) -> None:
        super().__init__()
        self.names = [str(n) for n in ([names] if isinstance(names, str) else names)]
        self.teacher_names = {n: str((teacher_names or {}).get(n, n)) for n in self.names}
        self.kind, self.weight, self.connector_bn = kind, float(weight), bool(connector_bn)
        self.loss = FEATURE_LOSSES[kind](**loss_kwargs)
        self.connectors = nn.ModuleDict()
        self.built = not self.uses_connector
        if student_channels is not None and teacher_channels is not None:
            self.build(student_channels, teacher_channels)

    @property
    def uses_connector(self) -> bool:
        return bool(self.loss.uses_connector)

    @property
    def teacher_feature_names(self) -> list[str]:
        """The teacher's taps to request (``teacher(x, features=...)``), one per student tap, without repeats."""
        return list(dict.fromkeys(self.teacher_names.values()))

    def missing_error(self, side: str, missing: str | list[str], available: Iterable[str]) -> ConfigError:
        """The one-line error for tap(s) ``missing`` absent from ``side``'s ``available`` taps (naming the field:
        ``teacher_names`` for a renamed teacher tap, else ``names``)."""
        available, name = [str(k) for k in available], missing if isinstance(missing, str) else missing[0]
        renamed = side == "teacher" and any(t == name != s for s, t in self.teacher_names.items())
        field = "distill.feat_kd.teacher_names" if renamed else "distill.feat_kd.names"
        hint = did_you_mean(name, available)
        suffixed = [k for k in available if k.endswith("." + name)]  # a composite teacher's det.p3 for p3
        if side == "teacher" and not renamed and suffixed:
            hint = f"; the teacher names it {suffixed[0]!r}: set distill.feat_kd.teacher_names={{{name}: {suffixed[0]}}}"
        return ConfigError(f"{field}: {missing!r} not among the {side} features {sorted(available)}{hint}")

    def build(
        self, student_channels: Mapping[str, int], teacher_channels: Mapping[str, int]
    ) -> FeatureDistiller:
        """Create the connectors (1x1 conv only where channels differ, identity otherwise); returns self.

        ``student_channels`` is keyed by the student's tap names, ``teacher_channels`` by the teacher's
        (``teacher_names``); connectors are keyed by the student's."""
        for side, chans, names in (
            ("student", student_channels, self.names),
            ("teacher", teacher_channels, self.teacher_feature_names),
        ):
            missing = [n for n in names if n not in chans]
            if missing:
                raise self.missing_error(side, missing, chans)
        if self.uses_connector:
            make = getattr(self.loss, "make_connector", Connector)
            self.connectors = nn.ModuleDict(
                {
                    _module_key(n): make(
                        int(student_channels[n]),
                        int(teacher_channels[self.teacher_names[n]]),
                        bn=self.connector_bn,
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
        """Build with channels read from one batch of features ``{name: [B, C, H, W]}`` (each side's tap names)."""
        dist = cls(**kwargs)
        return dist.build(
            {n: int(f.shape[1]) for n, f in s_feats.items()}, {n: int(f.shape[1]) for n, f in t_feats.items()}
        )

    def forward(
        self, s_feats: Mapping[str, Tensor], t_feats: Mapping[str, Tensor], t_det: DetOutput | None = None
    ) -> dict[str, Tensor]:
        """Unweighted feature KD.

        Args:
            s_feats, t_feats: ``{name: [B, C, H, W]}`` of student and teacher (keyed by ``names`` and by
                ``teacher_names`` respectively).
            t_det: the teacher's ``DetOutput``; needed (and only read) by losses weighted by the teacher's
                confidence (``score_l2``): ``CompatibilityError`` when it is missing for them.

        Returns:
            ``feat_kd``: mean over ``names`` of the per-name losses, and ``feat_kd_<name>`` for each name
            (0-d float32 tensors). Multiply ``feat_kd`` by ``weight`` to get its share of the total loss.
        """
        if not self.built:
            raise RuntimeError(
                "FeatureDistiller is not built: call build(student_channels, teacher_channels) or "
                "FeatureDistiller.from_features(...) before creating the optimizer"
            )
        conf = None
        if getattr(self.loss, "needs_teacher_confidence", False):
            if t_det is None:
                raise CompatibilityError(
                    f"distill.feat_kd.kind={self.kind!r} weights by the teacher's detection confidence, but the "
                    "teacher has no det output; use another kind"
                )
            conf = confidence_maps(t_det)
        out: dict[str, Tensor] = {}
        for name in self.names:
            t_name = self.teacher_names[name]
            for side, feats, key in (("student", s_feats, name), ("teacher", t_feats, t_name)):
                if key not in feats:
                    raise self.missing_error(side, key, feats)
            s, t = s_feats[name], t_feats[t_name].detach()
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
            extra = () if conf is None else (confidence_at(conf, tuple(t.shape[-2:])),)
            out[f"feat_kd_{name}"] = self.loss(s, t, *extra)
        out["feat_kd"] = torch.stack([out[f"feat_kd_{n}"] for n in self.names]).mean()
        return out
