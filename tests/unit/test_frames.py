import math
import struct
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from inference.preprocess import preprocess
from runner import frames as frames_module
from runner.frames import (
    MAX_FRAME_BYTES,
    Frame,
    VideoError,
    VideoInfo,
    encode_frame,
    open_video,
    rotated,
    sample_frames,
    scaled_size,
    video_info,
)
from tests.servers import bikes_video


def test_every_fifth_frame_of_a_real_video_is_sampled_in_order() -> None:
    path = bikes_video()
    total = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    frames = list(sample_frames(path, 5))
    assert [frame.index for frame in frames] == list(range(0, total, 5))
    assert len(frames) == math.ceil(total / 5)
    assert frames[0].image.shape == (408, 640) and (frames[0].width, frames[0].height) == (640, 272)  # I420
    assert frames[0].size == (640, 272) and frames[0].bgr().shape == (272, 640, 3)


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
    assert [f.size for f in frames] == [(640, 360)] * 2
    assert {(f.width, f.height) for f in frames} == {(1920, 1080)}
    assert scaled_size(3000, 2, 640) == (640, 1)  # never 0 pixels high
    assert scaled_size(200, 100, 640) == (200, 100)  # never scaled up


def i420(bgr: np.ndarray) -> Frame:
    return Frame(0, cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), bgr.shape[1], bgr.shape[0])


def test_a_noisy_frame_message_stays_under_the_topic_limit() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    assert len(encode_frame(i420(noise), "jpeg", 100).data) <= MAX_FRAME_BYTES
    huge = np.random.default_rng(1).integers(0, 255, (2400, 2400, 3), dtype=np.uint8)  # raw would pass it
    encoded = encode_frame(i420(huge), "i420")
    assert encoded.encoding == "jpeg" and len(encoded.data) <= MAX_FRAME_BYTES


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


def test_an_encoded_frame_is_the_decoder_samples_as_they_are_or_a_jpeg() -> None:
    ramp = np.linspace(0, 180, 96, dtype=np.uint8)
    frame = i420(np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1))
    raw = encode_frame(frame)
    assert (raw.encoding, raw.width, raw.height) == ("i420", 96, 64)
    assert raw.data == frame.image.tobytes() and len(raw.data) == 96 * 64 * 3 // 2  # lossless
    jpeg = encode_frame(frame, "jpeg", 95)
    decoded = cv2.imdecode(np.frombuffer(jpeg.data, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.encoding == "jpeg" and decoded.shape == (64, 96, 3) and len(jpeg.data) < len(raw.data)
    assert np.abs(decoded.astype(int) - frame.bgr().astype(int)).mean() < 4


def write_h264(path: Path, count: int, width: int = 64, height: int = 48) -> None:
    """H.264 (x264's defaults: B-frames, some of them references) of frames that all differ."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            image = np.full((height, width, 3), (i * 4) % 256, np.uint8)
            image[:8, (i % 8) * 8 : (i % 8) * 8 + 8] = 255
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode(None))


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]


@pytest.mark.parametrize("container", ["mp4", "h264"])  # h264: a raw stream, its packets carry no timestamps
def test_sampled_frames_are_those_of_a_full_decode_and_frames_no_sample_needs_are_not_decoded(
    tmp_path, monkeypatch, container: str
) -> None:
    video = tmp_path / f"bframes.{container}"
    write_h264(video, 60)
    with av.open(str(video)) as opened:
        assert (next(opened.demux(video=0)).pts is None) == (container == "h264")
    full = decode_all(video)
    decode, decoded = frames_module._decode, [0]

    def counting(context: av.VideoCodecContext, packet: av.Packet | None) -> list[av.VideoFrame]:
        frames = decode(context, packet)
        decoded[0] += len(frames)
        return frames

    monkeypatch.setattr(frames_module, "_decode", counting)
    sampled = list(sample_frames(video, 5))
    assert [frame.index for frame in sampled] == list(range(0, 60, 5))
    assert all((frame.image == full[frame.index]).all() for frame in sampled)
    if container == "mp4":
        assert decoded[0] < 60  # B-frames no other frame refers to were skipped
    else:
        assert decoded[0] == 60  # without timestamps every frame is decoded


def test_a_rotated_video_is_sampled_turned_as_players_show_it(tmp_path) -> None:
    upright, turned = tmp_path / "upright.mp4", tmp_path / "turned.mp4"
    write_h264(upright, 5, 64, 32)
    data = upright.read_bytes()
    matrix = data.index(b"tkhd") + 4 + 40  # the video track's display matrix (a version 0 header)
    assert struct.unpack(">9I", data[matrix : matrix + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    rotation = struct.pack(">9I", 0, 0xFFFF0000, 0, 0x10000, 0, 0, 0, 0, 0x40000000)  # what `rotate=90` writes
    turned.write_bytes(data[:matrix] + rotation + data[matrix + 36 :])
    (frame,) = sample_frames(turned, 5)
    assert (frame.width, frame.height) == (32, 64) and frame.size == (32, 64)
    assert (frame.image == rotated(decode_all(upright)[0], 1)).all()
    assert (
        frame.bgr() == np.rot90(Frame(0, decode_all(upright)[0], 64, 32).bgr())
    ).all()  # a quarter turn counterclockwise, as ffmpeg


@pytest.mark.parametrize(("container", "codec", "count"),
                         [("mp4", "libx264", 50), ("mkv", "libx264", None), ("ts", "libx264", None),
                          ("avi", "mjpeg", 50), ("webm", "libvpx-vp9", None), ("mov", "mpeg4", 50)])  # fmt: skip
def test_a_video_is_opened_without_decoding_a_frame_and_reads_as_its_container_declares(
    tmp_path, container: str, codec: str, count: int | None
) -> None:
    video = tmp_path / f"clip.{container}"
    with av.open(str(video), "w") as out:
        stream = out.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(50):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 5, np.uint8), format="bgr24")))
        out.mux(stream.encode(None))
    with open_video(video) as opened:  # H.264 tells its pixel format only in a decoded frame: none was
        assert (opened.streams.video[0].codec_context.format is None) == (codec == "libx264")
    assert video_info(video) == VideoInfo(frames=count, fps=25.0, width=96, height=64, seconds=2.0)
    assert [frame.index for frame in sample_frames(video, 5)] == list(range(0, 50, 5))
