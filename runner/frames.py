"""Pure frame work: sampling a video, scaling to the model's size, the design's preprocessing, JPEG encoding."""

import base64
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BLUR_KSIZE = 3
CONTRAST_ALPHA = 1.3
CONTRAST_BETA = 5
MAX_VIDEO_SIDE = 8192  # 8K (7680x4320 UHD, 8192x4320 DCI) is the largest video the runner decodes
MAX_VIDEO_PIXELS = 8192 * 4608
# A frame message stays well under Kafka's default message.max.bytes (1 MiB) with its JSON envelope.
MAX_IMAGE_BYTES = 700 * 1024
MIN_JPEG_QUALITY = 30


class VideoError(ValueError):
    """The file is not a video that can be decoded."""


@dataclass(frozen=True)
class Frame:
    index: int
    image: np.ndarray  # BGR, scaled down to the model's input size
    width: int  # the original frame's size: boxes are mapped back to it
    height: int


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Scale down so that the longer side is `max_side`, keeping the aspect (never up, never to 0 pixels)."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def open_video(path: Path) -> cv2.VideoCapture:
    """Open a video the runner can handle; VideoError with the reason otherwise."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError("the file could not be opened as a video (not a video, or a codec the decoder lacks)")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if max(width, height) > MAX_VIDEO_SIDE or width * height > MAX_VIDEO_PIXELS:
        capture.release()
        raise VideoError(f"the video is {width}x{height} pixels, larger than the 8K the runner decodes")
    return capture


def video_info(path: Path, stride: int) -> tuple[int | None, float | None]:
    """(How many frames `sample_frames` will yield, frames per second), as the container tells: an
    estimate (some containers do not know, or are wrong), None where it does not say. VideoError if
    it is not a video the runner decodes."""
    capture = open_video(path)
    try:
        count, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    return (-(-count // stride) if count > 0 else None), (round(fps, 3) if 0 < fps < 1000 else None)


def sample_frames(path: Path, stride: int, max_side: int | None = None) -> Generator[Frame, None, None]:
    """Yield every `stride`-th frame, reading the video once, in order, scaled down to `max_side`.

    Frames in between are grabbed (demuxed and decoded) but never converted, so memory holds one frame.
    """
    capture = open_video(path)
    try:
        index = 0
        while capture.grab():
            if index % stride == 0:
                ok, image = capture.retrieve()
                if ok and image is not None:
                    height, width = image.shape[:2]
                    yield Frame(index, fit(image, max_side) if max_side else image, width, height)
            index += 1
    finally:
        capture.release()


def preprocess(frame: np.ndarray) -> np.ndarray:
    """Gaussian blur (ksize 3) then contrast (alpha 1.3, beta 5), as in the design document."""
    blurred = cv2.GaussianBlur(frame, (BLUR_KSIZE, BLUR_KSIZE), 0)
    return cv2.convertScaleAbs(blurred, alpha=CONTRAST_ALPHA, beta=CONTRAST_BETA)


def encode_frame(frame: np.ndarray, quality: int) -> str:
    """Preprocess and encode one frame for `inference_tasks`: base64 of a JPEG (run in the process pool).

    A frame whose JPEG would pass MAX_IMAGE_BYTES (noise at the model's size can) is encoded again at a
    lower quality, so a frame message never exceeds the broker's limit."""
    image = preprocess(frame)
    while True:
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise VideoError("a frame could not be encoded as JPEG")
        if jpeg.nbytes * 4 / 3 <= MAX_IMAGE_BYTES or quality <= MIN_JPEG_QUALITY:
            break
        quality = max(MIN_JPEG_QUALITY, quality - 15)
    if jpeg.nbytes * 4 / 3 > MAX_IMAGE_BYTES:
        raise VideoError(f"a frame is too large to send even as JPEG quality {MIN_JPEG_QUALITY}")
    return base64.b64encode(jpeg.tobytes()).decode("ascii")
