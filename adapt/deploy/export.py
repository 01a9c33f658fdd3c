"""Export a :class:`~adapt.deploy.source.DeploySource` to one ONNX file that needs neither torch nor BERT.

The graph comes from torch's dynamo exporter (``torch.export`` + onnxscript), with a dynamic batch
and a dynamic height and width (multiples of the size divisibility, from the smallest size at which
Swin's last stage is still wider than its window up to 4096 px): every resized image runs at its
own padded size, as in adapt, so detections match adapt's for any image, not one fixed size.

Tracing GLIP takes a minute or more of CPU; the weights do not change the graph, so a trace is kept
per structure (module types, tensor shapes, deformable-conv form) and reused by every later export
of the same structure in the process, with the new weights applied by name
(``ONNXProgram.apply_weights``): exporting several runs of one model costs one trace. The graph is
saved unoptimised (every weight stays an initializer under its parameter name), without the
exporter's per-node records of the traced Python (``strip_trace_records``); onnxruntime folds
constants when it loads the file.

Every file is checked before it is written: onnxruntime runs it on a probe image and its outputs
are compared with adapt's eager model (adapt's own deformable convolution, full text); the largest
differences are recorded in the metadata (``verification``) and an export beyond tolerance fails.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import adapt
from adapt.atomic import atomic_path
from adapt.deploy import deform
from adapt.deploy.format import FORMAT, METADATA_KEY, VERSION, dumps
from adapt.deploy.graph import DeployedGLIP, fixed_text_columns, output_names
from adapt.deploy.source import DeployError, DeploySource
from adapt.model.box_coder import BoxCoder
from adapt.model.language import TextFeatures
from adapt.model.postprocess import class_scores

OPSET = 19  # the first with DeformConv
# The version of the graph adapt exports: raised whenever a change to DeployedGLIP, the deformable
# convolution's forms, the baked text or the outputs changes what a new file computes or holds
# (recorded as ``graph_version``; tests/fixtures/deploy is rebuilt when it moves).
GRAPH_VERSION = 1
INPUT_NAME = "images"
MAX_SIDE = 4096
MAX_BATCH = 256
# The probe check: onnxruntime vs adapt's eager model, on scores/centerness (probabilities) and deltas.
TOLERANCE = {"scores": 1e-4, "centerness": 1e-4, "deltas": 1e-3}

_TRACES: dict[str, Any] = {}  # structure digest -> torch.onnx.ONNXProgram (the last one only)


def graph_sizes(model: DeployedGLIP) -> dict[str, dict[str, int]]:
    """The batch, height and width the graph accepts.

    Height and width are multiples of the size divisibility, and at least the size at which Swin's
    last stage (stride 32) is wider than its window: below it, Swin shrinks its window to the map
    (a different computation, which one graph cannot hold for every size).
    """
    cfg = model.backbone.body.config
    multiple = int(model.cfg.input.size_divisibility)
    if multiple <= 0 or multiple % 32:
        raise DeployError(
            f"input.size_divisibility={multiple}: the deployed graph needs a positive multiple of 32"
        )
    smallest = 32 * (int(cfg.window_size) + 1)
    smallest = int(math.ceil(smallest / multiple) * multiple)
    side = {"min": smallest, "max": MAX_SIDE, "multiple": multiple}
    return {"batch": {"min": 1, "max": MAX_BATCH, "multiple": 1}, "height": side, "width": dict(side)}


def structure_digest(model: DeployedGLIP, implementation: str) -> str:
    """What decides the traced graph: module types, tensor names/shapes/dtypes, the deform form, the opset."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__module__}.{type(module).__qualname__};".encode())
    for name, tensor in model.state_dict().items():
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    h.update(f"{implementation};{OPSET};{torch.__version__}".encode())
    return h.hexdigest()


def _trace(model: DeployedGLIP, sizes: dict[str, dict[str, int]], implementation: str) -> Any:
    """The dynamo export of ``model`` with dynamic batch, height and width (no weights folded)."""
    from torch.export import Dim

    m = sizes["height"]["multiple"]
    batch = Dim("batch", min=sizes["batch"]["min"], max=sizes["batch"]["max"])
    height = Dim("height_blocks", min=sizes["height"]["min"] // m, max=sizes["height"]["max"] // m)
    width = Dim("width_blocks", min=sizes["width"]["min"] // m, max=sizes["width"]["max"] // m)
    # Batch 2 and a non-square example: size-1 and equal dimensions would be specialised.
    example = torch.zeros(2, 3, sizes["height"]["min"], sizes["width"]["min"] + m)
    # The exporter reports progress with print() and warns about things adapt does not use.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with (
        torch.no_grad(),
        deform.exportable_deform_convs(model, implementation),
        fixed_text_columns(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=output_names(len(model.head.scales)),
            dynamic_shapes=({0: batch, 2: m * height, 3: m * width},),
            opset_version=OPSET,
            dynamo=True,
            optimize=False,
            verbose=False,
        )


def _program(model: DeployedGLIP, sizes: dict[str, dict[str, int]], implementation: str) -> Any:
    """A trace of this structure (reused, with this model's weights applied) or a new one."""
    digest = structure_digest(model, implementation)
    program = _TRACES.get(digest)
    if program is None:
        program = _trace(model, sizes, implementation)
        _TRACES.clear()  # one trace kept: GLIP-T's weights are ~400 MB
        _TRACES[digest] = program
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tensors the graph does not read (the unused cls_logits)
            program.apply_weights({k: v.detach() for k, v in model.state_dict().items()})
    return program


def strip_trace_records(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what the exporter records about the Python it traced, per node and value (stack traces
    with this machine's paths, module names, FX nodes): most of a small model's file, and nothing
    a runtime reads. The graph, its names and its weights are unchanged."""

    def strip(graph: onnx.GraphProto) -> None:
        del graph.metadata_props[:]
        for items in (graph.node, graph.value_info, graph.input, graph.output, graph.initializer):
            for item in items:
                del item.metadata_props[:]
        for node in graph.node:  # subgraphs (If, Loop, Scan), where there are any
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g)
                for sub in attr.graphs:
                    strip(sub)

    strip(proto.graph)
    return proto


def probe_image(sizes: dict[str, dict[str, int]]) -> torch.Tensor:
    """A fixed, smooth, normalised-looking image at the smallest accepted size (+ one block of width)."""
    h, w = sizes["height"]["min"], sizes["width"]["min"] + sizes["width"]["multiple"]
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 1.5


@torch.no_grad()
def reference_outputs(source: DeploySource, image: torch.Tensor) -> list[np.ndarray]:
    """The graph's outputs as adapt's eager model computes them: its own deformable convolution, the
    full 256-token text, ``adapt.model.postprocess.class_scores``."""
    model = source.model
    text = source.text
    assert text.embedded is not None
    batch = image.shape[0]
    full = TextFeatures(
        text.hidden.expand(batch, -1, -1), text.mask.expand(batch, -1), text.embedded.expand(batch, -1, -1)
    )
    out = model.head(model.backbone(image), full)
    classes = max(source.label_to_tokens, default=0)
    deltas = [r.permute(0, 2, 3, 1) for r in out.bbox_reg]
    centerness = [c[:, 0].sigmoid() for c in out.centerness]
    scores = [
        class_scores(logits.sigmoid(), source.label_to_tokens, classes).reshape(*c.shape, classes)
        for logits, c in zip(out.dot_product_logits, centerness, strict=True)
    ]
    return [t.numpy() for t in (*deltas, *centerness, *scores)]


def verify(proto: onnx.ModelProto, source: DeploySource, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Run the file's graph in onnxruntime and adapt's eager model on the probe image; the largest
    absolute differences per output kind. Raises DeployError beyond :data:`TOLERANCE`."""
    import onnxruntime as ort

    image = probe_image(sizes)
    want = reference_outputs(source, image)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: image.numpy()})
    levels = len(got) // 3
    diffs: dict[str, float] = {}
    for k, kind in enumerate(("deltas", "centerness", "scores")):
        pairs = list(
            zip(got[k * levels : (k + 1) * levels], want[k * levels : (k + 1) * levels], strict=True)
        )
        if any(a.shape != b.shape for a, b in pairs):
            raise DeployError(f"the exported graph's {kind} shapes differ from adapt's on the probe image")
        diffs[kind] = float(max(np.abs(a - b).max() for a, b in pairs))
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE[k]}
    if bad:
        raise DeployError(
            f"the exported graph differs from adapt's model on the probe image by {bad} (limits {TOLERANCE})"
        )
    return {"probe_shape": list(image.shape), "max_abs_diff": diffs, "tolerance": dict(TOLERANCE)}


def metadata(
    source: DeploySource, model: DeployedGLIP, sizes: dict[str, Any], implementation: str
) -> dict[str, Any]:
    import onnxscript

    cfg = source.model.cfg
    coder = BoxCoder()
    return {
        "format": FORMAT,
        "version": VERSION,
        "graph_version": GRAPH_VERSION,
        "adapt_version": adapt.__version__,
        "exported_with": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "opset": OPSET,
        },
        "source": source.identity,
        "caption": source.caption,
        "class_names": list(source.class_names),
        "labels": list(source.labels),
        "label_to_tokens": {str(k): list(v) for k, v in sorted(source.label_to_tokens.items())},
        "input": {
            "min_size_test": int(cfg.input.min_size_test),
            "max_size_test": int(cfg.input.max_size_test),
            "pixel_mean": [float(v) for v in cfg.input.pixel_mean],
            "pixel_std": [float(v) for v in cfg.input.pixel_std],
            "size_divisibility": int(cfg.input.size_divisibility),
        },
        "inference": {
            "score_threshold": float(cfg.inference.score_threshold),
            "pre_nms_top_n": int(cfg.inference.pre_nms_top_n),
            "nms_threshold": float(cfg.inference.nms_threshold),
            "detections_per_image": int(cfg.inference.detections_per_image),
        },
        "anchors": {"sizes": list(cfg.anchors.sizes), "strides": list(cfg.anchors.strides)},
        "box_coder": {"weights": list(coder.weights), "bbox_xform_clip": coder.bbox_xform_clip},
        "graph": {
            "input": INPUT_NAME,
            "outputs": output_names(len(cfg.anchors.strides)),
            "levels": len(cfg.anchors.strides),
            "num_classes": model.num_classes,
            "text_tokens": int(model.text_mask.shape[1]),
            "deform_conv": implementation,
            **sizes,
        },
    }


def export_onnx(
    source: DeploySource,
    out: str | os.PathLike[str],
    deform_conv: str = deform.DEFAULT,
) -> Path:
    """Write the deployed detector of ``source`` to ``out`` (atomically); returns the path."""
    model = DeployedGLIP(source.model, source.text, source.label_to_tokens).eval()
    sizes = graph_sizes(model)
    smallest = sizes["height"]["min"] - sizes["height"]["multiple"]  # a short side above this pads to min
    if source.model.cfg.input.min_size_test <= smallest:
        raise DeployError(
            f"input.min_size_test={source.model.cfg.input.min_size_test} resizes images below the "
            f"{sizes['height']['min']} px the graph needs (Swin's last stage must be wider than its window); "
            f"export with --min-size {smallest + 1} or more"
        )
    program = _program(model, sizes, deform_conv)
    proto = strip_trace_records(program.model_proto)
    meta = metadata(source, model, sizes, deform_conv)
    meta["verification"] = verify(proto, source, sizes)
    onnx.helper.set_model_props(proto, {METADATA_KEY: dumps(meta)})
    out = Path(out)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
    return out
