"""The deployed file's metadata: everything the runtime needs besides the graph, as one JSON entry.

An ONNX file carries string key/value pairs (``metadata_props``); adapt writes one of them,
``adapt.deploy``, a JSON object (sorted keys) with:

* ``format``/``version`` (this layout), ``graph_version`` (the graph adapt exports,
  ``export.GRAPH_VERSION``: informative, the runtime reads the graph's fields below),
  ``adapt_version``, the exporter's library versions and the opset;
* ``source``: what was deployed (an export's mode, task, base model and every file's SHA-256, or
  the model name and checkpoint identity of a class list);
* ``caption``, ``class_names``, ``labels`` (1-based), ``label_to_tokens`` (what the graph's class
  pooling was built from; score column j is label j + 1);
* ``input``: the resize rule's ``min_size_test``/``max_size_test``, ``pixel_mean``/``pixel_std``
  (BGR, 0-255), ``size_divisibility``;
* ``inference``: ``score_threshold``, ``pre_nms_top_n``, ``nms_threshold``, ``detections_per_image``;
* ``anchors`` (sizes, strides) and ``box_coder`` (weights, ``bbox_xform_clip``);
* ``graph``: input and output names, levels, classes, text tokens kept, the deformable
  convolution's form, and the batch / height / width the graph accepts (``min``, ``max``,
  ``multiple``), which the runtime enforces before running it;
* ``verification``: the largest differences from adapt's eager model on the export's probe image.

This module is read by the runtime, so it imports the standard library only. The file is data: the
runtime checks every field it uses (type and range) and never imports or evaluates anything it names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

METADATA_KEY = "adapt.deploy"
FORMAT = "adapt-onnx-detector"
VERSION = 1


class DeployedFileError(ValueError):
    """A deployed file is unreadable or not one this runtime can run; the message names the file."""


def dumps(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False)


def parse(text: str | None, where: str) -> dict[str, Any]:
    """The metadata entry, checked for the fields the runtime reads."""
    if text is None:
        raise DeployedFileError(
            f"{where}: an ONNX model, but not one adapt.deploy wrote (no {METADATA_KEY!r} entry)"
        )
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise DeployedFileError(f"{where}: the {METADATA_KEY!r} metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DeployedFileError(f"{where}: metadata format is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DeployedFileError(
            f"{where}: deployed-file version {meta.get('version')!r} is not {VERSION}, "
            "the one this adapt runs"
        )
    _check(meta, where)
    return meta


def _check(meta: dict[str, Any], where: str) -> None:
    def need(path: str, ok: bool) -> None:
        if not ok:
            raise DeployedFileError(f"{where}: metadata field {path} is missing or invalid")

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    names: Any = meta.get("class_names")
    labels: Any = meta.get("labels")
    need("class_names", isinstance(names, list) and all(isinstance(n, str) for n in names))
    need("labels", isinstance(labels, list) and all(isinstance(v, int) and v >= 1 for v in labels))
    need("labels", len(labels) == len(names))
    inp: Any = meta.get("input")
    inf: Any = meta.get("inference")
    need("input", isinstance(inp, dict))
    for key in ("min_size_test", "max_size_test", "size_divisibility"):
        need(f"input.{key}", isinstance(inp.get(key), int) and inp[key] > 0)
    for key in ("pixel_mean", "pixel_std"):
        need(f"input.{key}", isinstance(inp.get(key), list) and len(inp[key]) == 3)
        need(f"input.{key}", all(number(v) for v in inp[key]))
    need("input.pixel_std", all(v != 0 for v in inp["pixel_std"]))
    need("inference", isinstance(inf, dict))
    for key in ("score_threshold", "nms_threshold"):
        need(f"inference.{key}", number(inf.get(key)))
    for key in ("pre_nms_top_n", "detections_per_image"):
        need(f"inference.{key}", isinstance(inf.get(key), int) and inf[key] >= 0)
    anchors: Any = meta.get("anchors")
    coder: Any = meta.get("box_coder")
    need("anchors", isinstance(anchors, dict))
    for key in ("sizes", "strides"):
        need(
            f"anchors.{key}",
            isinstance(anchors.get(key), list) and all(isinstance(v, int) for v in anchors[key]),
        )
    need("anchors", len(anchors["sizes"]) == len(anchors["strides"]))
    need("box_coder", isinstance(coder, dict) and number(coder.get("bbox_xform_clip")))
    need("box_coder.weights", isinstance(coder.get("weights"), list) and len(coder["weights"]) == 4)
    need("box_coder.weights", all(number(v) for v in coder["weights"]))
    graph: Any = meta.get("graph")
    need("graph", isinstance(graph, dict))
    need("graph.input", isinstance(graph.get("input"), str))
    need(
        "graph.outputs",
        isinstance(graph.get("outputs"), list) and all(isinstance(o, str) for o in graph["outputs"]),
    )
    need("graph.levels", graph.get("levels") == len(anchors["strides"]))
    need("graph.outputs", len(graph["outputs"]) == 3 * graph["levels"])
    for axis in ("batch", "height", "width"):
        dim: Any = graph.get(axis)
        need(f"graph.{axis}", isinstance(dim, dict))
        need(
            f"graph.{axis}",
            all(isinstance(dim.get(k), int) and dim[k] >= 1 for k in ("min", "max", "multiple")),
        )
