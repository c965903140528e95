"""ONNX export with an onnxruntime parity check.

Public API::

    mtkd.export.onnx.export_onnx(model, out, *, imgsz, opset=17, dynamic_batch=True) -> Path  (opset 11..20;
        <out> and its model card <out>.json are replaced atomically, as a pair)
    mtkd.export.onnx.verify_onnx(model, path, imgsz, *, batch=2, tol=1e-4) -> {"ok", "max_abs_diff", "latency_ms", ...}
    mtkd.models.flat.FlatOutputs(adapter)   adapter -> flat tuple of tensors (seg, raw det) for tracing/pruning

CLI: ``mtkd export`` (``tools/export.py``).
"""
