"""Training engine: ``trainer`` (the loop), ``checkpoint`` (safe, atomic files), ``dist`` (torchrun/DDP),
``ema``, ``optim`` (optimizer + LR schedule), ``logger`` (results.csv, TensorBoard), ``hooks``, ``setup``,
``rng``; ``train_cli`` is ``mtkd train`` / ``tools/train.py``. Nothing is imported eagerly."""
