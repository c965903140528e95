"""Structured pruning (Torch-Pruning) and conversion of pickled / pruned / Ultralytics files to safe checkpoints.

Public API::

    mtkd.prune.prune.prune_model(model, *, ratio=None, target_macs=None, importance="magnitude",
                                 global_pruning=False, imgsz=128, iterative_steps=1, round_to=None,
                                 loss_fn=None, seed=0) -> model            (pruned in place)
    mtkd.prune.prune.count_macs_params(model, imgsz) -> (macs, params)
    mtkd.prune.prune.TracedOutputs(model)   (an nn.Module returning every output branch as a tuple of tensors:
                                             what to hand Torch-Pruning in your own pruning script)
    mtkd.prune.convert.convert_file(src, out, *, trust_pickle=False, verify=False, tol=1e-5, base=None,
                                    imgsz=128, imports=()) -> {"out", "kind", "params", "max_abs_diff"}
    mtkd.prune.convert.convert_module(model, out, *, verify=True, tol=1e-5, imgsz=128) -> {...}
    mtkd.utils.sniff.scan_file(path) -> FileScan   (what a pickle would import, without unpickling)

CLI: ``mtkd prune`` (``tools/prune.py``) and ``mtkd convert`` (``tools/convert.py``).
"""
