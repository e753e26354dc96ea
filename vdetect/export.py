"""`python -m vdetect.export CHECKPOINT OUT.onnx`: an Ultralytics detection checkpoint to the ONNX model
the workers serve. It runs in a process of its own, never inside a service: a `.pt` is a pickle, and
loading one runs its code (import only checkpoints you trust). Needs the `export` extra
(`pip install -e '.[export]'`: Ultralytics and PyTorch).

The export keeps the model's own head: a model with an NMS-free one-to-one head (YOLOv10, YOLO26) is
exported end to end (`[batch, max_det, 6]`), any other detection head as `[batch, 4 + classes, anchors]`;
both with dynamic batch, height and width. On success the last line of stdout is a JSON object (the
Ultralytics version, the task, the class count); on failure a line `error: ...` on stderr and:
"""

import json
import os
import sys
from pathlib import Path

NOT_INSTALLED, NOT_DETECTION, UNREADABLE, FAILED = 3, 4, 5, 6  # exit statuses


def fail(code: int, message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def main(checkpoint: Path, out: Path) -> None:
    os.environ["YOLO_OFFLINE"] = "True"  # no download, no update check, no telemetry
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import torch  # noqa: F401, PLC0415 - the export environment only
        import ultralytics  # noqa: PLC0415
        from ultralytics import YOLO  # noqa: PLC0415
    except ImportError as error:
        fail(NOT_INSTALLED, f"exporting a .pt needs Ultralytics and PyTorch ({error.name} is missing): "
                            "pip install -e '.[export]'")  # fmt: skip
    try:
        model = YOLO(str(checkpoint), task=None)
    except Exception as error:  # noqa: BLE001 - a corrupt, truncated or foreign file
        fail(UNREADABLE, f"{checkpoint.name} is not an Ultralytics checkpoint: {type(error).__name__}: {error}")
    if model.task != "detect":
        fail(NOT_DETECTION, f"{checkpoint.name} is a {model.task} model, not a detection model")
    layers = getattr(model.model, "model", None)
    head = layers[-1] if layers is not None else None
    end2end = getattr(head, "one2one_cv2", None) is not None  # YOLOv10 and YOLO26 carry an NMS-free head
    try:
        imgsz = model.overrides.get("imgsz") or 640
        exported = model.export(format="onnx", dynamic=True, simplify=True, nms=False if end2end else None,
                                imgsz=imgsz, device="cpu", verbose=False)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - Ultralytics raises many kinds
        fail(FAILED, f"the export of {checkpoint.name} failed: {type(error).__name__}: {error}")
    Path(exported).replace(out)
    print(json.dumps({"ultralytics": ultralytics.__version__, "task": model.task, "classes": len(model.names),
                      "end2end": end2end}))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail(2, "usage: python -m vdetect.export CHECKPOINT.pt OUT.onnx")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
