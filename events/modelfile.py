"""What an ONNX detection model is, read from its metadata and its shapes, never from its file name.

Two output layouts are served (both Ultralytics detection heads):

- `anchors`: `[batch, 4 + classes, anchors]` (YOLOv5u, v8, v9, 11, 12, and v10/26 exported without
  their end-to-end head): centre x, centre y, width, height, then one score per class; NMS here.
- `end2end`: `[batch, max_det, 6]` (YOLOv10 and YOLO26 by default): x1, y1, x2, y2, score, class,
  already free of duplicates (no NMS).

Anything else (a segmentation, pose, classification or oriented-box model, another layout) is refused
with what was found (`ModelError`).
"""

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from events.coco import COCO_NAMES

Layout = Literal["anchors", "end2end"]


class ModelError(ValueError):
    """Not a model the workers can serve; the message says what was found."""


@dataclass(frozen=True)
class ModelInfo:
    names: tuple[str, ...]
    imgsz: int  # the long side frames are letterboxed to
    stride: int | None  # set for a model with dynamic height and width: frames are padded only to it ("rect")
    layout: Layout
    batch_fixed: bool  # the input's batch axis is a number: frames go in one at a time
    input_name: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def class_names(metadata: dict[str, str], count: int | None) -> tuple[str, ...]:
    """Names stored in an Ultralytics export; a COCO model that stores only "0".."79" gets COCO's names."""
    try:
        names = ast.literal_eval(metadata["names"]) if metadata.get("names") else {}
    except (ValueError, SyntaxError) as error:
        raise ModelError(f"its class names are not readable: {metadata['names'][:80]!r}") from error
    if not isinstance(names, dict | list):
        raise ModelError("its class names are not a list or a mapping")
    names = dict(enumerate(names)) if isinstance(names, list) else names
    count = len(names) if count is None else count
    if count == 0:
        raise ModelError("it names no classes (metadata `names`)")
    ordered = tuple(str(names.get(i, i)) for i in range(count))
    if count == len(COCO_NAMES) and all(name == str(i) for i, name in enumerate(ordered)):
        return COCO_NAMES
    return ordered


def describe(inputs: list[tuple[str, list[Any]]], outputs: list[list[Any]], metadata: dict[str, str]) -> ModelInfo:
    """The model's serving facts from its input and output shapes (numbers, or names for dynamic axes)
    and its metadata; ModelError for anything the workers cannot serve."""
    task = metadata.get("task", "detect")
    if task != "detect":
        raise ModelError(f"it is a {task} model, not a detection model")
    if len(inputs) != 1 or len(inputs[0][1]) != 4:
        raise ModelError(f"it takes {[shape for _, shape in inputs]}, not one image batch [batch, 3, height, width]")
    name, shape = inputs[0]
    if shape[1] not in (3, "channels") and isinstance(shape[1], int):
        raise ModelError(f"its input has {shape[1]} channels, not 3")
    if len(outputs) != 1 or len(outputs[0]) != 3:
        raise ModelError(f"it gives outputs {outputs}, not one [batch, 4 + classes, anchors] or [batch, max_det, 6]")
    out = outputs[0]
    end2end = metadata.get("end2end") == "True" or (out[2] == 6 and not (isinstance(out[1], int) and out[1] <= 6))
    if end2end:
        if out[2] != 6:
            raise ModelError(f"its metadata says end-to-end, but its output is {out}, not [batch, max_det, 6]")
        names = class_names(metadata, None)
    else:
        if not isinstance(out[1], int) or out[1] <= 4:
            raise ModelError(f"its output is {out}, not [batch, 4 + classes, anchors] or [batch, max_det, 6]")
        names = class_names(metadata, out[1] - 4)
    dynamic = not isinstance(shape[2], int) or not isinstance(shape[3], int)
    try:
        imgsz = shape[2] if not dynamic else ast.literal_eval(metadata.get("imgsz", "[640]"))[0]
        stride = int(metadata.get("stride", 32)) if dynamic else None
    except (ValueError, SyntaxError, TypeError, IndexError) as error:
        raise ModelError(f"its input size or stride is not readable: {error}") from error
    if not isinstance(imgsz, int) or not 32 <= imgsz <= 4096:
        raise ModelError(f"its input size {imgsz!r} is not a number from 32 to 4096")
    return ModelInfo(names, imgsz, stride, "end2end" if end2end else "anchors", isinstance(shape[0], int), name)


def inspect(path: Path) -> ModelInfo:
    """Read an ONNX file's shapes and metadata (ONNX Runtime, without optimising the graph)."""
    import onnxruntime as ort  # noqa: PLC0415 - only the services that read models need it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - whatever ONNX Runtime refuses, the file is not a model
        raise ModelError(f"it is not a valid ONNX model: {str(error).splitlines()[0][:300]}") from error
    return describe([(i.name, list(i.shape)) for i in session.get_inputs()],
                    [list(o.shape) for o in session.get_outputs()],
                    dict(session.get_modelmeta().custom_metadata_map))  # fmt: skip
