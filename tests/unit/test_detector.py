"""The default model on real photos (Ultralytics' bus.jpg and zidane.jpg)."""

from collections import Counter

import pytest

from events.coco import COCO_NAMES
from events.modelfile import class_names
from events.settings import Settings
from inference.detector import CPU, CUDA, OnnxDetector, execution_providers
from tests.servers import photo


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    settings = Settings()
    return OnnxDetector(settings.model_path, settings.conf_threshold, settings.iou_threshold)


def test_default_model_has_coco_names(detector: OnnxDetector) -> None:
    assert detector.names == COCO_NAMES and len(COCO_NAMES) == 80


def test_bus_photo_shows_a_bus_and_people(detector: OnnxDetector) -> None:
    image = photo("bus.jpg")
    (objects,) = detector.detect([image])
    classes = Counter(o.class_name for o in objects)
    assert classes["bus"] == 1
    assert classes["person"] >= 3
    bus = next(o for o in objects if o.class_name == "bus")
    height, width = image.shape[:2]
    x1, y1, x2, y2 = bus.box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert x2 - x1 > 0.8 * width  # the bus spans the photo: boxes are in original-frame pixels
    assert all(o.conf >= 0.25 for o in objects)


def test_zidane_photo_shows_two_people(detector: OnnxDetector) -> None:
    (objects,) = detector.detect([photo("zidane.jpg")])
    people = [o for o in objects if o.class_name == "person"]
    assert len(people) == 2
    assert all(o.box[2] <= 1280 and o.box[3] <= 720 for o in objects)


def test_a_batch_gives_the_same_detections_as_single_frames(detector: OnnxDetector) -> None:
    bus, zidane = (photo(n) for n in ("bus.jpg", "zidane.jpg"))
    batched = detector.detect([bus, zidane])
    single = [detector.detect([bus])[0], detector.detect([zidane])[0]]
    for got, want in zip(batched, single, strict=True):
        assert [o.class_name for o in got] == [o.class_name for o in want]
        for a, b in zip(got, want, strict=True):
            assert a.box == pytest.approx(b.box, abs=0.5)


def test_class_names_keep_a_custom_models_names() -> None:
    assert class_names({"names": "{0: 'helmet', 1: 'vest'}"}, 2) == ("helmet", "vest")
    assert class_names({}, 3) == ("0", "1", "2")


def test_the_gpu_is_used_when_asked_for_or_when_present() -> None:
    on_gpu = ["TensorrtExecutionProvider", CUDA, CPU]
    assert execution_providers("cpu", on_gpu) == [CPU]
    assert execution_providers("auto", on_gpu) == execution_providers("cuda", on_gpu) == [CUDA, CPU]
    assert execution_providers("auto", [CPU]) == [CPU]
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        execution_providers("cuda", [CPU])
