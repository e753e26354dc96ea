"""Pure pre- and post-processing around a YOLO model: letterbox, confidence filter, NMS, box rescaling.

The model's output layout is `[batch, 4 + classes, anchors]` (Ultralytics' default ONNX export for
YOLOv8, YOLOv10 without its end-to-end head, YOLO11): boxes as centre x, centre y, width, height in
the letterboxed input's pixels, then one score per class.
"""

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
MAX_WH = 7680  # offset that separates classes for class-aware NMS in one pass


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: scale, then padding on the left and top."""

    scale: float
    pad_x: float
    pad_y: float
    width: int
    height: int


def letterbox(image: np.ndarray, size: int = 640, stride: int | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the longer side is `size`, then pad, centred (as Ultralytics).

    Without `stride` the result is `size` x `size` (a model with a fixed input). With `stride`, each
    side is padded only up to a multiple of it (Ultralytics' "rect" inference for a model with dynamic
    axes): a 640x272 frame becomes 640x288 instead of 640x640, less than half the work."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))  # a 3000x2 frame keeps a row
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if scale != 1 else image
    out_w, out_h = (size, size) if stride is None else (-(-new_w // stride) * stride, -(-new_h // stride) * stride)
    pad_x, pad_y = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, bottom = round(pad_y - 0.1), round(pad_y + 0.1)
    left, right = round(pad_x - 0.1), round(pad_x + 0.1)
    boxed = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return boxed, Letterbox(scale=scale, pad_x=left, pad_y=top, width=width, height=height)


def to_tensor(images: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 HWC images -> RGB float32 NCHW in [0, 1]."""
    batch = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / 255.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression on xyxy boxes; returns kept indices, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = (np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])).clip(0)
        h = (np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])).clip(0)
        inter = w * h
        iou = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True)
class Detection:
    class_id: int
    box: tuple[float, float, float, float]
    conf: float


def decode(
    output: np.ndarray, fit: Letterbox, conf_threshold: float, iou_threshold: float, max_det: int = 300
) -> list[Detection]:
    """One image's raw output `[4 + classes, anchors]` -> detections in original-frame pixels."""
    pred = output.T
    scores = pred[:, 4:]
    class_ids = scores.argmax(axis=1)
    confs = scores[np.arange(len(scores)), class_ids]
    mask = confs >= conf_threshold
    if not mask.any():
        return []
    cx, cy, w, h = pred[mask, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    confs, class_ids = confs[mask], class_ids[mask]
    keep = nms(boxes + class_ids[:, None] * MAX_WH, confs, iou_threshold)[:max_det]
    boxes = boxes[keep]
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - fit.pad_x) / fit.scale).clip(0, fit.width)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - fit.pad_y) / fit.scale).clip(0, fit.height)
    return [
        Detection(
            class_id=int(c),
            box=(round(float(box[0]), 1), round(float(box[1]), 1), round(float(box[2]), 1), round(float(box[3]), 1)),
            conf=round(float(s), 4),
        )  # fmt: skip
        for box, c, s in zip(boxes, class_ids[keep], confs[keep], strict=True)
    ]
