"""Task and distillation losses.

Distillation (this package's public API): ``seg_kl``, ``seg_cwd``, ``det_logit_kd`` (logit KD),
``FeatureDistiller`` and the feature losses (FitNet, AT, SP, CC, CWD), ``Connector``, ``Schedule``,
``DistillLoss`` and ``plain_loss`` (the combination). Task losses live in ``mtkd.losses.task``.
"""

from mtkd.losses.combine import EXTRA_KEYS, MAIN_KEYS, DistillLoss, plain_loss
from mtkd.losses.connectors import Connector
from mtkd.losses.feature_kd import (
    FEATURE_LOSSES,
    ATLoss,
    CCLoss,
    CWDFeatureLoss,
    FeatureDistiller,
    FitNetLoss,
    SPLoss,
)
from mtkd.losses.logit_kd import channel_wise_kl, det_logit_kd, seg_cwd, seg_kl
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
    "SPLoss",
    "Schedule",
    "channel_wise_kl",
    "det_logit_kd",
    "plain_loss",
    "seg_cwd",
    "seg_kl",
]
