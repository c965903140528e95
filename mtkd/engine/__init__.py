"""Training engine: ``trainer`` (the loop, resume, interrupts), ``task`` (what a step computes: plain or distilled;
the module DDP wraps), ``hooks`` (checkpointing, evaluation, logging, early stop, in a documented order),
``state`` (checkpoint contents and resume), ``setup`` (run folder, lock, resume resolution), ``ema``, ``optim``
(optimizer + LR schedule), ``logger`` (results.csv, TensorBoard), ``rng``, ``benchmark``; ``train_cli`` is
``mtkd train`` / ``tools/train.py``. Checkpoints are ``mtkd.checkpoint``, DDP helpers ``mtkd.utils.dist``.
Nothing is imported eagerly."""
