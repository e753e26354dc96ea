"""How far the pipeline's detections agree with the model's own, on real videos (F1, same class,
IoU >= 0.5): against the same model run directly on the same frames in this process (the engine the
workers use, and ONNX Runtime in f32), and against Ultralytics' `predict` with the same ONNX model on
the same preprocessed frames, where an interpreter with Ultralytics is given or found."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from events.settings import Settings
from inference.agreement import f1
from inference.detector import OnnxDetector
from tests.reference import Objects, direct, in_frame_order, model_inputs

ULTRALYTICS = """
import json, sys
import numpy as np
from ultralytics import YOLO
frames, scales = np.load(sys.argv[1]), json.loads(sys.argv[3])
model = YOLO(sys.argv[2], task="detect")
found = []
for image, (sx, sy) in zip(frames, scales):
    r = model.predict(image, conf=float(sys.argv[4]), iou=float(sys.argv[5]), verbose=False)[0]
    boxes = zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
    found.append([{"class": int(c), "conf": s, "box": [x1 * sx, y1 * sy, x2 * sx, y2 * sy]}
                  for (x1, y1, x2, y2), s, c in boxes])
print(json.dumps(found))
"""


def ultralytics_on_frames(video: Path, settings: Settings, python: str) -> list[Objects] | None:
    """Ultralytics' `predict` with the same ONNX model on the frames inference receives; None without it."""
    frames, scales = [], []
    for frame, image in model_inputs(video, settings):
        frames.append(image)
        scales.append((frame.width / frame.size[0], frame.height / frame.size[1]))
    with tempfile.TemporaryDirectory() as folder:
        stacked = Path(folder) / "frames.npy"
        np.save(stacked, np.stack(frames))
        argv = [python, "-c", ULTRALYTICS, str(stacked), str(settings.model_path), json.dumps(scales),
                str(settings.conf_threshold), str(settings.iou_threshold)]  # fmt: skip
        env = {**os.environ, "YOLO_OFFLINE": "True", "YOLO_CONFIG_DIR": folder}
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return None
    names = OnnxDetector(settings.model_path).names  # the ONNX file's classes are numbers to Ultralytics
    return [[{**obj, "class": names[obj["class"]]} for obj in objects]
            for objects in json.loads(done.stdout.strip().splitlines()[-1])]  # fmt: skip


def pairs(a: list[Objects], b: list[Objects]) -> float:
    return round(f1(list(zip(a, b, strict=True))), 4)


def agreement(answer: dict, video: Path, settings: Settings, python: str) -> dict:
    """F1 of the pipeline's answer against each reference, and of the references between them."""
    pipeline, here = in_frame_order(answer), direct(video, settings)
    f32 = OnnxDetector(settings.model_path, settings.conf_threshold, settings.iou_threshold,
                       max_detections=settings.max_detections)  # fmt: skip
    onnx_f32 = direct(video, settings, f32)
    low = sum(o["conf"] < 0.35 for f in here for o in f) / max(1, sum(map(len, here)))
    report = {"frames": len(pipeline), "boxes": sum(map(len, pipeline)), "low_confidence_share": round(low, 3),
              "pipeline_vs_direct": pairs(pipeline, here),
              "pipeline_vs_onnxruntime_f32": pairs(pipeline, onnx_f32)}  # fmt: skip
    if (ultralytics := ultralytics_on_frames(video, settings, python)) is not None:
        report["pipeline_vs_ultralytics"] = pairs(pipeline, ultralytics)
        report["onnxruntime_f32_vs_ultralytics"] = pairs(onnx_f32, ultralytics)
    return report
