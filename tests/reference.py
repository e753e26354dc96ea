"""The model run directly on a video's sampled frames, in this process: what the pipeline's answer is
compared with (the tests, and the bench's agreement figures)."""

from pathlib import Path

from events.settings import Settings
from inference.detector import Detector
from inference.preprocess import preprocess
from inference.service import build_detector
from runner.frames import sample_frames

Objects = list[dict]


def direct(video: Path, settings: Settings | None = None, detector: Detector | None = None) -> list[Objects]:
    """Each sampled frame's objects, in frame order: the runner's decoding and scaling, inference's colour
    conversion and preprocessing, then the detector (the workers' engine and thresholds unless one is
    given), boxes in the original frame's pixels, as the result gives them."""
    settings = settings or Settings()
    detector = detector or build_detector(settings)
    found: list[Objects] = []
    for frame in sample_frames(video, settings.frame_stride, settings.model_input_size):
        image = preprocess(frame.bgr())
        sx, sy = frame.width / image.shape[1], frame.height / image.shape[0]
        found.append([{"class": o.class_name, "conf": o.conf,
                       "box": [v * s for v, s in zip(o.box, (sx, sy, sx, sy), strict=True)]}
                      for o in detector.detect([image])[0]])  # fmt: skip
    return found


def in_frame_order(answer: dict) -> list[Objects]:
    """A result's objects, frame by frame in frame order."""
    return [frame["objects"] for frame in sorted(answer["prediction"], key=lambda f: f["frame"])]
