import numpy as np
import pytest

from inference.postprocess import decode, nms
from inference.preprocess import Letterbox, letterbox, to_tensor


def test_letterbox_keeps_aspect_ratio_and_centres_the_frame() -> None:
    frame = np.full((272, 640, 3), 200, dtype=np.uint8)
    boxed, fit = letterbox(frame, 640)
    assert boxed.shape == (640, 640, 3)
    assert fit.scale == 1 and fit.pad_x == 0 and fit.pad_y == 184
    assert (boxed[:184] == 114).all() and (boxed[184:456] == 200).all() and (boxed[456:] == 114).all()


def test_letterbox_scales_a_large_portrait_frame_down() -> None:
    boxed, fit = letterbox(np.zeros((1080, 810, 3), dtype=np.uint8), 640)
    assert boxed.shape == (640, 640, 3)
    assert fit.scale == pytest.approx(640 / 1080)
    assert fit.pad_y == 0 and fit.pad_x == 80


def test_to_tensor_is_rgb_nchw_in_unit_range() -> None:
    bgr = np.zeros((2, 3, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # blue
    tensor = to_tensor([bgr])
    assert tensor.shape == (1, 3, 2, 3) and tensor.dtype == np.float32
    assert (tensor[0, 2] == 1).all() and (tensor[0, :2] == 0).all()


def test_nms_drops_overlapping_boxes_and_keeps_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
    assert nms(boxes, scores, 0.95).tolist() == [0, 1, 2]


def raw_output(rows: list[tuple[float, float, float, float, int, float]], classes: int = 80) -> np.ndarray:
    """Build a model output [4 + classes, anchors] from (cx, cy, w, h, class, score) rows."""
    out = np.zeros((4 + classes, len(rows)), dtype=np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[:4, i] = cx, cy, w, h
        out[4 + cls, i] = score
    return out


def test_decode_filters_by_confidence_runs_classwise_nms_and_maps_boxes_to_the_frame() -> None:
    fit = Letterbox(scale=0.5, pad_x=0, pad_y=100, width=1280, height=880)
    output = raw_output(
        [
            (100, 200, 40, 40, 2, 0.9),  # car
            (101, 201, 40, 40, 2, 0.6),  # same car, suppressed
            (101, 201, 40, 40, 0, 0.5),  # a person in the same place: other class, kept
            (300, 300, 20, 20, 2, 0.2),  # under the confidence threshold
        ]
    )
    found = decode(output, fit, conf_threshold=0.25, iou_threshold=0.45)
    assert [(d.class_id, d.conf) for d in found] == [(2, 0.9), (0, 0.5)]
    assert found[0].box == (160.0, 160.0, 240.0, 240.0)  # (coordinate - pad) / scale


def test_decode_clips_boxes_to_the_frame() -> None:
    fit = Letterbox(scale=1, pad_x=0, pad_y=0, width=100, height=100)
    (found,) = decode(raw_output([(95, 5, 20, 20, 1, 0.8)]), fit, 0.25, 0.45)
    assert found.box == (85.0, 0.0, 100.0, 15.0)


def test_decode_of_nothing_is_empty() -> None:
    fit = Letterbox(scale=1, pad_x=0, pad_y=0, width=10, height=10)
    assert decode(raw_output([(5, 5, 2, 2, 0, 0.1)]), fit, 0.25, 0.45) == []


def test_rect_letterbox_pads_only_up_to_the_stride() -> None:
    boxed, fit = letterbox(np.full((272, 640, 3), 7, dtype=np.uint8), 640, stride=32)
    assert boxed.shape == (288, 640, 3)  # not 640 x 640: less than half the pixels to run
    assert (fit.pad_x, fit.pad_y, fit.scale) == (0, 8, 1)
    boxed, fit = letterbox(np.zeros((1080, 810, 3), dtype=np.uint8), 640, stride=32)
    assert boxed.shape == (640, 480, 3) and fit.pad_x == 0


def test_a_very_wide_frame_keeps_at_least_one_row() -> None:
    """A 3000x2 frame once scaled to 0 rows and made cv2.resize raise in every inference worker."""
    boxed, fit = letterbox(np.zeros((2, 3000, 3), np.uint8), 640, 32)
    assert boxed.shape == (32, 640, 3) and fit.height == 2 and fit.width == 3000
