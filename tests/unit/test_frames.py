import base64
import math

import cv2
import numpy as np
import pytest

from runner.frames import MAX_IMAGE_BYTES, VideoError, encode_frame, fit, preprocess, sample_frames
from tests.servers import bikes_video


def test_every_fifth_frame_of_a_real_video_is_sampled_in_order() -> None:
    path = bikes_video()
    total = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    frames = list(sample_frames(path, 5))
    assert [frame.index for frame in frames] == list(range(0, total, 5))
    assert len(frames) == math.ceil(total / 5)
    assert frames[0].image.shape == (272, 640, 3) and (frames[0].width, frames[0].height) == (640, 272)


def write_video(path, width: int, height: int, frames: int = 3) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.release()


def test_frames_are_scaled_down_to_the_model_size_keeping_their_aspect_and_original_size(tmp_path) -> None:
    video = tmp_path / "wide.mp4"
    write_video(video, 1920, 1080, 2)
    frames = list(sample_frames(video, 1, 640))
    assert [f.image.shape for f in frames] == [(360, 640, 3)] * 2
    assert {(f.width, f.height) for f in frames} == {(1920, 1080)}
    assert fit(np.zeros((2, 3000, 3), np.uint8), 640).shape == (1, 640, 3)  # never 0 pixels high
    assert fit(np.zeros((100, 200, 3), np.uint8), 640).shape == (100, 200, 3)  # never scaled up


def test_a_noisy_frame_message_stays_under_the_broker_limit() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    assert len(encode_frame(noise, 100)) <= MAX_IMAGE_BYTES


def test_a_file_that_is_not_a_video_is_refused(tmp_path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"these are not the frames you are looking for" * 100)
    with pytest.raises(VideoError):
        list(sample_frames(bogus, 5))


def test_preprocess_blurs_then_raises_contrast() -> None:
    flat = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert (preprocess(flat) == 135).all()  # 1.3 * 100 + 5; a blur of a flat image changes nothing
    bright = np.full((8, 8, 3), 250, dtype=np.uint8)
    assert (preprocess(bright) == 255).all()  # saturates
    spike = np.zeros((9, 9, 3), dtype=np.uint8)
    spike[4, 4] = 160
    assert preprocess(spike)[4, 4, 0] < 1.3 * 160 + 5  # the blur spread the spike


def test_encoded_frame_is_base64_jpeg_of_the_preprocessed_frame() -> None:
    ramp = np.linspace(0, 180, 96, dtype=np.uint8)
    frame = np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1)
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(encode_frame(frame, 95)), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == frame.shape
    assert np.abs(decoded.astype(int) - preprocess(frame).astype(int)).mean() < 8
