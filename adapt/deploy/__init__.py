"""Deploy what was learned: an ONNX detector with the text baked in, run with numpy, Pillow and onnxruntime.

    python -m adapt.deploy export <run>/export --out detector.onnx
    python -m adapt.deploy predict detector.onnx IMAGES... --out DIR

``export`` (torch, the ``deploy`` extra) writes one ONNX file: the detector's image side with its
text features as constants (no BERT in the graph), plus metadata holding the classes, the resize
rule, the inference settings and the source's identity (``adapt.deploy.format``). ``predict`` runs
it with ``adapt.deploy.runtime``, which imports neither torch nor any other training dependency,
and writes the same ``detections.json`` as ``python -m adapt.predict``.

This package's ``__init__`` imports nothing, so the runtime stays importable without torch.
"""
