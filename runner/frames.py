"""Pure frame work: sampling a video, the preprocessing of the design (blur, contrast), JPEG encoding."""

import base64
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

BLUR_KSIZE = 3
CONTRAST_ALPHA = 1.3
CONTRAST_BETA = 5


class VideoError(ValueError):
    """The file is not a video that can be decoded."""


def sample_frames(path: Path, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(frame_index, frame)` for every `stride`-th frame, reading the video once, in order.

    Frames in between are grabbed (demuxed and decoded) but never converted, so memory holds one frame.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError("the file could not be opened as a video")
    try:
        index = 0
        while capture.grab():
            if index % stride == 0:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    yield index, frame
            index += 1
    finally:
        capture.release()


def preprocess(frame: np.ndarray) -> np.ndarray:
    """Gaussian blur (ksize 3) then contrast (alpha 1.3, beta 5), as in the design document."""
    blurred = cv2.GaussianBlur(frame, (BLUR_KSIZE, BLUR_KSIZE), 0)
    return cv2.convertScaleAbs(blurred, alpha=CONTRAST_ALPHA, beta=CONTRAST_BETA)


def encode_frame(frame: np.ndarray, quality: int) -> str:
    """Preprocess and encode one frame for `inference_tasks`: base64 of a JPEG (run in the process pool)."""
    ok, jpeg = cv2.imencode(".jpg", preprocess(frame), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise VideoError("a frame could not be encoded as JPEG")
    return base64.b64encode(jpeg.tobytes()).decode("ascii")
