"""mtkd: multi-task (detection + semantic segmentation) knowledge distillation.

Importing ``mtkd`` is cheap and has no side effects; heavy modules (torch, ultralytics) are imported by the
sub-packages that need them.
"""

__version__ = "0.2.0"
