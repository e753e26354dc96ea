"""What a model is, from its shapes and metadata (events.modelfile), and the end-to-end layout's decoding."""

import numpy as np
import pytest

from events.coco import COCO_NAMES
from events.modelfile import ModelError, describe
from inference.postprocess import decode_end2end
from inference.preprocess import letterbox

IMAGES = [("images", ["batch", 3, "height", "width"])]


def test_the_anchor_layout_counts_its_classes_from_the_output() -> None:
    info = describe(IMAGES, [["batch", 84, "anchors"]], {"stride": "32", "imgsz": "[640, 640]", "task": "detect"})
    assert (info.layout, info.imgsz, info.stride, info.names, info.batch_fixed) == (
        "anchors", 640, 32, COCO_NAMES, False,
    )  # fmt: skip
    two = describe([("x", [1, 3, 320, 320])], [[1, 6, 2100]], {"names": "{0: 'helmet', 1: 'vest'}"})
    assert (two.layout, two.names, two.imgsz, two.stride, two.batch_fixed) == ("anchors", ("helmet", "vest"), 320,
                                                                              None, True)  # fmt: skip


def test_the_end_to_end_layout_is_read_from_metadata_or_shape_not_the_name() -> None:
    names = "{0: 'part0', 1: 'part1'}"
    by_metadata = describe(IMAGES, [["batch", 300, 6]], {"end2end": "True", "names": names})
    by_shape = describe(IMAGES, [["batch", 300, 6]], {"names": names})
    assert by_metadata.layout == by_shape.layout == "end2end" and by_shape.names == ("part0", "part1")
    # two classes in the anchor layout is [batch, 6, anchors]: not taken for end to end
    assert describe(IMAGES, [["batch", 6, "anchors"]], {"names": names}).layout == "anchors"


@pytest.mark.parametrize(
    ("inputs", "outputs", "metadata", "says"),
    [
        (IMAGES, [["batch", 116, "anchors"], ["batch", 32, 160, 160]], {"task": "segment"}, "a segment model"),
        (IMAGES, [["batch", 56, "anchors"]], {"task": "pose"}, "a pose model"),
        (IMAGES, [["batch", 1000]], {"task": "classify"}, "a classify model"),
        (IMAGES, [["batch", 84, "anchors"], ["batch", 32, 160, 160]], {}, "not one [batch, 4 + classes"),
        (IMAGES, [["batch", 1000]], {}, "not one [batch, 4 + classes"),
        ([("a", [1, 3, 640, 640]), ("b", [1])], [[1, 84, 8400]], {}, "not one image batch"),
        ([("x", [1, 1, 640, 640])], [[1, 84, 8400]], {}, "1 channels"),
        (IMAGES, [["batch", 4, "anchors"]], {}, "not [batch, 4 + classes"),
        (IMAGES, [["batch", 300, 7]], {"end2end": "True", "names": "{0: 'a'}"}, "not [batch, max_det, 6]"),
        (IMAGES, [["batch", 300, 6]], {}, "names no classes"),
        (IMAGES, [["batch", 84, "anchors"]], {"names": "not python"}, "not readable"),
    ],
)
def test_anything_else_is_refused_with_what_was_found(inputs, outputs, metadata, says) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match=says.replace("[", r"\[").replace("+", r"\+")):
        describe(inputs, outputs, metadata)


def test_end_to_end_rows_come_back_in_the_frames_pixels_best_first() -> None:
    frame = np.zeros((480, 960, 3), dtype=np.uint8)  # letterboxed to 640: scale 2/3, 160 px of padding on top
    _, fit = letterbox(frame, 640, None)
    rows = np.array([[64, 160 + 64, 128, 160 + 128, 0.5, 1], [0, 160, 640, 160 + 320, 0.9, 0], [1, 1, 2, 2, 0.1, 0]],
                    dtype=np.float32)  # fmt: skip
    found = decode_end2end(rows, fit, conf_threshold=0.25)
    assert [(d.class_id, d.conf) for d in found] == [(0, 0.9), (1, 0.5)]  # the 0.1 row is under the threshold
    assert found[0].box == (0.0, 0.0, 960.0, 480.0)
    assert found[1].box == (96.0, 96.0, 192.0, 192.0)
