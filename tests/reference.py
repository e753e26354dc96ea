"""The model run directly on a video's sampled frames, in this process: what the pipeline's answer is
compared with (the tests, and the bench's agreement figures)."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from events.contracts import InferenceTask
from events.settings import Settings
from inference.detector import Detector
from inference.service import build_detector, model_input
from runner.frames import Frame, encode_frame, frame_task, sample_frames

Objects = list[dict]


def model_inputs(video: Path, settings: Settings | None = None) -> Iterator[tuple[Frame, np.ndarray]]:
    """Each sampled frame and what the detector is given for it, by the pipeline's own code: the runner's
    decoding, scaling and message, then inference's reading of that message and its preprocessing."""
    settings = settings or Settings()
    for frame in sample_frames(video, settings.frame_stride, settings.model_input_size):
        encoded = encode_frame(frame, settings.frame_encoding, settings.jpeg_quality)
        message = frame_task("reference", frame, encoded).to_bytes()
        yield frame, model_input(InferenceTask.from_bytes(message))


def direct(video: Path, settings: Settings | None = None, detector: Detector | None = None) -> list[Objects]:
    """Each sampled frame's objects, in frame order, from `model_inputs` and the detector (the workers'
    engine and thresholds unless one is given), boxes in the original frame's pixels as the result gives
    them."""
    settings = settings or Settings()
    detector = detector or build_detector(settings)
    found: list[Objects] = []
    for frame, image in model_inputs(video, settings):
        sx, sy = frame.width / image.shape[1], frame.height / image.shape[0]
        found.append([{"class": o.class_name, "conf": o.conf,
                       "box": [v * s for v, s in zip(o.box, (sx, sy, sx, sy), strict=True)]}
                      for o in detector.detect([image])[0]])  # fmt: skip
    return found


def in_frame_order(answer: dict) -> list[Objects]:
    """A result's objects, frame by frame in frame order."""
    return [frame["objects"] for frame in sorted(answer["prediction"], key=lambda f: f["frame"])]
