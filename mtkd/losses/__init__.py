"""Task and distillation losses.

Distillation (this package's public API): ``seg_kl``, ``seg_cwd``, ``seg_dist``, ``det_logit_kd`` (logit KD),
``FeatureDistiller`` and the feature losses (FitNet, AT, SP, CC, CWD, PKD, teacher-confidence-weighted L2, MGD),
``confidence_maps`` (the teacher's per-location detection confidence), ``Connector``, ``Schedule``,
``DistillLoss`` and ``plain_loss`` (the combination). Task losses live in ``mtkd.losses.task``.
"""

from mtkd.losses.combine import EXTRA_KEYS, MAIN_KEYS, DistillLoss, plain_loss
from mtkd.losses.confidence import confidence_at, confidence_maps
from mtkd.losses.connectors import Connector
from mtkd.losses.feature_kd import (
    FEATURE_LOSSES,
    ATLoss,
    CCLoss,
    CWDFeatureLoss,
    FeatureDistiller,
    FitNetLoss,
    MGDGenerator,
    MGDLoss,
    PKDLoss,
    ScoreL2Loss,
    SPLoss,
)
from mtkd.losses.logit_kd import channel_wise_kl, det_logit_kd, seg_cwd, seg_dist, seg_kl
from mtkd.utils.schedules import Schedule

__all__ = [
    "ATLoss",
    "CCLoss",
    "CWDFeatureLoss",
    "Connector",
    "DistillLoss",
    "EXTRA_KEYS",
    "FEATURE_LOSSES",
    "FeatureDistiller",
    "FitNetLoss",
    "MAIN_KEYS",
    "MGDGenerator",
    "MGDLoss",
    "PKDLoss",
    "SPLoss",
    "Schedule",
    "ScoreL2Loss",
    "channel_wise_kl",
    "confidence_at",
    "confidence_maps",
    "det_logit_kd",
    "plain_loss",
    "seg_cwd",
    "seg_dist",
    "seg_kl",
]
