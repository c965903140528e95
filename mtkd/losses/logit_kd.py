"""Logit distillation: segmentation (pixel-wise KL, channel-wise CWD, relational DIST) and detection (MSE, LD).

Conventions shared by every function here:
    - the teacher tensors are detached inside (defensive: no gradient can reach the teacher);
    - math is done in float32 even under autocast (inputs are cast with ``.float()``);
    - shapes that cannot be compared raise ``CompatibilityError`` naming the tensors and their shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtkd.errors import CompatibilityError
from mtkd.models.outputs import DetOutput

_EPS = 1e-9


def _check_same(name_s: str, s: Tensor, name_t: str, t: Tensor, dims: slice | None = None) -> None:
    a, b = (s.shape, t.shape) if dims is None else (s.shape[dims], t.shape[dims])
    if s.dim() != t.dim() or a != b:
        raise CompatibilityError(
            f"cannot distill {name_t} {tuple(t.shape)} into {name_s} {tuple(s.shape)}: shapes differ"
        )


def resize_like(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``t [B, C, H, W]`` to ``size``; no-op if already there."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def seg_kl(s: Tensor, t: Tensor, *, temperature: float = 1.0, ignore_mask: Tensor | None = None) -> Tensor:
    """Pixel-wise KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Reduction: the KL is **summed over classes** and **averaged over the (non-ignored) pixels** of the
    batch. (``nn.KLDivLoss(reduction="mean")`` would also divide by the number of classes, silently
    shrinking the term by ``C``; ``reduction="batchmean"`` would sum over pixels.)

    Args:
        s: student logits ``[B, C, h, w]``.
        t: teacher logits ``[B, C, H, W]``; bilinearly resized to ``(h, w)`` when sizes differ. Detached.
        temperature: ``T > 0``.
        ignore_mask: optional bool ``[B, H', W']``, True = pixel excluded (e.g. ``masks == 255``); resized to
            ``(h, w)`` with nearest neighbour.

    Returns:
        0-d float32 tensor. If every pixel is ignored: 0, still connected to ``s`` (zero gradient).
    """
    _check_same("student seg", s, "teacher seg", t, slice(0, 2))
    if s.dim() != 4:
        raise CompatibilityError(f"seg logits must be [B, C, h, w], got student seg {tuple(s.shape)}")
    s = s.float()
    with torch.no_grad():  # teacher side once, without autograd: KL = sum p_t log p_t - sum p_t log p_s
        t = resize_like(t.detach().float(), tuple(s.shape[-2:]))
        log_pt = F.log_softmax(t / temperature, dim=1)
        pt = log_pt.exp()
        neg_entropy = (pt * log_pt).sum(dim=1)  # [B, h, w]
        keep = None
        if ignore_mask is not None:
            keep = (~_resize_mask(ignore_mask, tuple(s.shape[-2:]), batch=s.shape[0])).float()
            n_keep = keep.sum()
    kl = neg_entropy - (pt * F.log_softmax(s / temperature, dim=1)).sum(dim=1)  # [B, h, w]
    # masked mean without boolean indexing or a host sync: every pixel ignored gives 0 / 1 = 0, still connected
    # to s (zero gradient)
    mean = kl.mean() if keep is None else (kl * keep).sum() / n_keep.clamp_min(1.0)
    return mean * temperature**2


def _resize_mask(mask: Tensor, size: tuple[int, int], *, batch: int) -> Tensor:
    """Nearest resize of a bool ``[B, H, W]`` mask to ``[B, *size]``."""
    if mask.dim() != 3 or mask.shape[0] != batch:
        raise CompatibilityError(f"ignore mask must be [B={batch}, H, W], got {tuple(mask.shape)}")
    mask = mask.bool()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


def channel_wise_kl(s: Tensor, t: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (CWD, Shu et al. 2021) on maps of equal shape ``[B, C, H, W]``.

    Each channel is turned into a distribution over its ``H*W`` positions with ``softmax(x / T)``; the loss
    is ``T^2 * KL(teacher || student)`` summed over positions and **averaged over channels and batch**
    (``B * C``), as in the authors' implementation. ``t`` is detached; float32 math.
    """
    _check_same("student map", s, "teacher map", t)
    b, c = s.shape[:2]
    log_ps = F.log_softmax(s.float().reshape(b, c, -1) / temperature, dim=-1)
    log_pt = F.log_softmax(t.detach().float().reshape(b, c, -1) / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1)  # [B, C]
    return kl.mean() * temperature**2


def seg_cwd(s: Tensor, t: Tensor, *, temperature: float = 1.0) -> Tensor:
    """CWD on segmentation logits: ``s [B, C, h, w]``, ``t [B, C, H, W]`` (resized to ``(h, w)``).

    See ``channel_wise_kl`` for the reduction. No ignore mask: the spatial softmax needs every position.
    """
    _check_same("student seg", s, "teacher seg", t, slice(0, 2))
    return channel_wise_kl(s, resize_like(t.detach(), tuple(s.shape[-2:])), temperature=temperature)


def _pearson(a: Tensor, b: Tensor, dim: int, keep: Tensor | None = None) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (``eps = 1e-8`` in the denominator, as in the DIST
    authors' code); with ``keep`` (0/1 weights broadcastable to ``a``) only the kept entries count."""
    if keep is None:
        a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    else:
        n = keep.sum(dim, keepdim=True).clamp_min(1.0)
        a = (a - (a * keep).sum(dim, keepdim=True) / n) * keep
        b = (b - (b * keep).sum(dim, keepdim=True) / n) * keep
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)


def seg_dist(
    s: Tensor,
    t: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher") on segmentation logits.

    Matches *relations* instead of values, which tolerates a teacher much stronger than the student. Every
    (non-ignored) pixel ``n`` of the batch is an instance with class probabilities ``p = softmax(z / tau)``:

        inter = 1 - mean_n pearson_c(p_s[n, :], p_t[n, :])    per-pixel ranking of the classes
        intra = 1 - mean_c pearson_n(p_s[:, c], p_t[:, c])    per-class ranking of the pixels (whole batch)
        loss  = tau^2 * (beta * inter + gamma * intra)

    as in the authors' segmentation code (``hunto/DIST_KD``: pixels as instances, beta = gamma = 1, no
    temperature, i.e. tau = 1) with the ``tau^2`` factor of their classification code. ``tau`` is this loss's
    own option (``distill.seg_kd_options.tau``), not the ``temperature`` schedule. Each term lies in ``[0, 2]``.

    Args:
        s: student logits ``[B, C, h, w]``.
        t: teacher logits ``[B, C, H, W]``; bilinearly resized to ``(h, w)`` when sizes differ. Detached.
        beta, gamma: weights of the inter- and intra-class terms (``>= 0``); tau: ``> 0``.
        ignore_mask: optional bool ``[B, H', W']``, True = pixel excluded from both terms (as in ``seg_kl``);
            resized to ``(h, w)`` with nearest neighbour. Masked sums, no boolean indexing (no host sync).

    Returns:
        0-d float32 tensor. If every pixel is ignored: 0, still connected to ``s`` (zero gradient).
    """
    _check_same("student seg", s, "teacher seg", t, slice(0, 2))
    if s.dim() != 4:
        raise CompatibilityError(f"seg logits must be [B, C, h, w], got student seg {tuple(s.shape)}")
    c = s.shape[1]
    p_s = F.softmax(s.float() / tau, dim=1).movedim(1, -1).reshape(-1, c)  # [N, C], N = B*h*w
    with torch.no_grad():
        t = resize_like(t.detach().float(), tuple(s.shape[-2:]))
        p_t = F.softmax(t / tau, dim=1).movedim(1, -1).reshape(-1, c)
        keep = None
        if ignore_mask is not None:
            keep = (~_resize_mask(ignore_mask, tuple(s.shape[-2:]), batch=s.shape[0])).float().reshape(-1, 1)
            n_keep = keep.sum()
    if keep is not None and not bool(n_keep > 0):
        return s.sum() * 0.0  # every pixel ignored: 0, still connected to s
    r_pixel = _pearson(p_s, p_t, dim=1)  # [N]
    inter = 1.0 - (r_pixel.mean() if keep is None else (r_pixel * keep[:, 0]).sum() / n_keep)
    intra = 1.0 - _pearson(p_s, p_t, dim=0, keep=keep).mean()  # [C] correlations over the kept pixels
    return tau**2 * (beta * inter + gamma * intra)


def _weighted_mean(per_anchor: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of ``[B, A]`` values, weighted by ``weight [B, A]`` (normalized by its sum) when given."""
    if weight is None:
        return per_anchor.mean()
    return (per_anchor * weight).sum() / weight.sum().clamp_min(_EPS)


def det_logit_kd(
    s: DetOutput,
    t: DetOutput,
    *,
    weight: float = 1.0,
    weight_by_teacher: bool = True,
    ld: bool = False,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Detection-head distillation on the uniform view of ``DetOutput``.

    Per anchor (``A`` positions of all levels):
        - box: anchor heads: MSE on the raw box outputs ``[B, A, 4]`` (mean over the 4 values).
          Anchor-free (DFL) heads: MSE on the DFL logits ``[B, A, 4*reg_max]`` or, with ``ld=True``,
          localization distillation (LD, Zheng et al. 2022): ``T^2 * KL(softmax(t/T) || softmax(s/T))``
          over the ``reg_max`` bins of each side, averaged over the 4 sides.
        - obj (anchor heads only): ``(sigmoid(s_obj) - sigmoid(t_obj))^2``. Anchor-free heads have no
          objectness: the term is absent from the result, not computed.
        - cls: MSE on sigmoid probabilities ``[B, A, C]`` (mean over classes); probabilities, as in YOLOv5-KD
          practice, so that very negative background logits cannot dominate.

    Reduction over anchors: plain mean, or with ``weight_by_teacher`` a weighted mean of the box and cls terms
    with per-anchor weights ``w = sigmoid(t_obj)`` (anchor heads) or ``max_c sigmoid(t_cls)`` (anchor-free),
    normalized by ``sum(w)``, so the many background anchors do not dominate. The obj term is never weighted:
    it is the signal that teaches the student which anchors are background.

    Returns:
        ``det_kd = (det_kd_box + det_kd_obj + det_kd_cls) * weight`` and the unweighted sub-terms
        ``det_kd_box``, ``det_kd_obj`` (anchor heads only), ``det_kd_cls``; 0-d float32 tensors.
    """
    if s.kind != t.kind:
        raise CompatibilityError(
            f"cannot distill a {t.kind!r} teacher det head into a {s.kind!r} student head"
        )
    _check_same("student det.box", s.box, "teacher det.box", t.box)
    _check_same("student det.cls", s.cls, "teacher det.cls", t.cls)
    if (s.obj is None) != (t.obj is None):
        raise CompatibilityError(
            "cannot distill det.obj: present in " + ("student only" if t.obj is None else "teacher only")
        )
    # contiguous: the head's box/obj/cls are strided views of one tensor, on which CPU elementwise kernels do not
    # vectorize (a sigmoid of the benchmark's cls view: 0.23 ms strided, 0.1 ms with the copy)
    t_box, t_cls = t.box.detach().float().contiguous(), t.cls.detach().float().contiguous()
    s_box, s_cls = s.box.float().contiguous(), s.cls.float().contiguous()
    t_obj = t.obj.detach().float().contiguous() if t.obj is not None else None
    anchor_free = t_obj is None

    t_cls_p = t_cls.sigmoid()
    t_obj_p = None if anchor_free else t_obj.sigmoid()
    w = None
    if weight_by_teacher:
        w = t_cls_p.amax(dim=-1) if anchor_free else t_obj_p

    if anchor_free and ld:
        box_a = _ld_per_anchor(s_box, t_box, reg_max=s.reg_max or t.reg_max, temperature=temperature)
    else:
        box_a = (s_box - t_box).pow(2).mean(dim=-1)
    out = {"det_kd_box": _weighted_mean(box_a, w)}
    if not anchor_free:
        _check_same("student det.obj", s.obj, "teacher det.obj", t.obj)
        out["det_kd_obj"] = (s.obj.float().contiguous().sigmoid() - t_obj_p).pow(2).mean()
    out["det_kd_cls"] = _weighted_mean((s_cls.sigmoid() - t_cls_p).pow(2).mean(dim=-1), w)
    out["det_kd"] = sum(out.values()) * weight
    return out


def _ld_per_anchor(s_box: Tensor, t_box: Tensor, *, reg_max: int | None, temperature: float) -> Tensor:
    """LD per anchor: ``[B, A, 4*reg_max]`` DFL logits -> ``[B, A]`` (KL over bins, mean over 4 sides)."""
    d = s_box.shape[-1]
    if not reg_max or d != 4 * reg_max:
        raise CompatibilityError(
            f"localization distillation needs det.box [B, A, 4*reg_max]; got {tuple(s_box.shape)} with reg_max={reg_max}"
        )
    s_bins = s_box.reshape(*s_box.shape[:2], 4, reg_max)
    t_bins = t_box.reshape(*t_box.shape[:2], 4, reg_max)
    log_ps = F.log_softmax(s_bins / temperature, dim=-1)
    log_pt = F.log_softmax(t_bins / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=-1)  # [B, A, 4]
    return kl.mean(dim=-1) * temperature**2


def zero_like(ref: Tensor | None) -> Tensor:
    """A 0-d float32 zero on ``ref``'s device, with no autograd history (for absent terms)."""
    return torch.zeros((), dtype=torch.float32, device=ref.device if ref is not None else None)
