"""Pure frame work: sampling a video, scaling to the model's size in the decoder's own pixels (YUV 4:2:0,
I420), and encoding a frame for `inference_tasks`. The design's preprocessing runs in inference
(`inference.preprocess`), on the pixels as the runner made them."""

import heapq
import itertools
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from av.container import InputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from events.contracts import MAX_MESSAGE_BYTES, InferenceTask

MAX_VIDEO_SIDE = 8192  # 8K (7680x4320 UHD, 8192x4320 DCI) is the largest video the runner decodes
MAX_VIDEO_PIXELS = 8192 * 4608
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES - 1024 * 1024  # a frame message stays under what its topic takes
MIN_JPEG_QUALITY = 30
NOT_A_VIDEO = "the file could not be opened as a video (not a video, or a codec the decoder lacks)"
# Packets read ahead to know each one's display index before it is decoded: more than any codec
# reorders (H.264 and HEVC hold at most 16 frames), a few MB of compressed video at most.
REORDER_WINDOW = 32


class VideoError(ValueError):
    """The file is not a video that can be decoded, or one past the limits: the job fails with the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container declares (a hostile or damaged file may lie: decoding checks again)."""

    frames: int | None  # None: the container does not say
    fps: float | None
    width: int
    height: int
    seconds: float | None

    def sampled(self, stride: int) -> int | None:
        """How many frames `sample_frames` will yield, as far as the container tells."""
        return -(-self.frames // stride) if self.frames else None

    def check(self, max_frames: int, max_seconds: float) -> None:
        """VideoError unless the video is within the limits (MAX_VIDEO_FRAMES, MAX_VIDEO_SECONDS)."""
        if self.frames is not None and self.frames > max_frames:
            raise VideoError(f"the video declares {self.frames} frames, more than the limit of {max_frames}")
        if self.seconds is not None and self.seconds > max_seconds:
            raise VideoError(f"the video lasts {self.seconds:.0f} s, longer than the limit of {max_seconds:.0f} s")


@dataclass(frozen=True)
class Frame:
    index: int
    image: np.ndarray  # I420: (height * 3 / 2, width) bytes, Y then U then V, scaled down to the model's input
    width: int  # the original frame's size: boxes are mapped back to it
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """The image's width and height (even numbers: I420 halves both for its colour planes)."""
        return self.image.shape[1], self.image.shape[0] * 2 // 3

    def bgr(self) -> np.ndarray:
        return cv2.cvtColor(self.image, cv2.COLOR_YUV2BGR_I420)


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size with the longer side `max_side`, keeping the aspect (never up, never to 0 pixels)."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale))


def even(side: int) -> int:
    return max(2, side - side % 2)


def planes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of an I420 image."""
    width, height = image.shape[1], image.shape[0] * 2 // 3
    flat, luma, chroma = image.reshape(-1), width * height, (width // 2) * (height // 2)
    return (flat[:luma].reshape(height, width), flat[luma : luma + chroma].reshape(height // 2, width // 2),
            flat[luma + chroma :].reshape(height // 2, width // 2))  # fmt: skip


def rotated(image: np.ndarray, turns: int) -> np.ndarray:
    """An I420 image turned `turns` quarter turns counterclockwise (each plane turned)."""
    turned = [np.rot90(plane, turns) for plane in planes(image)]
    return np.concatenate([plane.reshape(-1) for plane in turned]).reshape(-1, turned[0].shape[1])


def open_video(path: Path) -> InputContainer:
    """Open a video the runner can handle; VideoError with the reason otherwise."""
    try:
        # FFmpeg decodes a stream's first frames while it opens a file, only to learn their pixel format,
        # which the runner does not need: a 1080p keyframe costs 0.1 s, paid once more by every open
        container = av.open(str(path), metadata_errors="ignore", options={"skip_frame": "all"})
    except Exception:  # noqa: BLE001 - FFmpeg's errors, and whatever a crafted file makes PyAV raise
        raise VideoError(NOT_A_VIDEO) from None
    try:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        context = container.streams.video[0].codec_context
        if context is None:
            raise VideoError("the video's codec is one the decoder lacks")
        width, height = context.width, context.height
        if max(width, height) > MAX_VIDEO_SIDE or width * height > MAX_VIDEO_PIXELS:
            raise VideoError(f"the video is {width}x{height} pixels, larger than the 8K the runner decodes")
    except BaseException as error:
        container.close()
        if isinstance(error, Exception) and not isinstance(error, VideoError):
            raise VideoError(f"the video could not be opened ({type(error).__name__})") from error
        raise
    return container


def video_info(path: Path) -> VideoInfo:
    """What the container declares; VideoError if it is not a video the runner decodes. Opening a file
    builds its index, whose size the file chooses: the runner calls this in a bounded process
    (`runner.probe`), and opens the file itself only once that passed."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        count, rate = stream.frames, stream.guessed_rate or stream.average_rate
        width, height, duration = stream.codec_context.width, stream.codec_context.height, container.duration
    fps = float(rate) if rate else 0.0
    fps_known = 0 < fps < 1000
    seconds = duration / av.time_base if duration and duration > 0 else None
    if seconds is None and count > 0 and fps_known:
        seconds = count / fps
    return VideoInfo(count if count > 0 else None, round(fps, 3) if fps_known else None, width, height, seconds)


def sample_frames(
    path: Path, stride: int, max_side: int | None = None, max_frames: int | None = None
) -> Generator[Frame, None, None]:
    """Yield every `stride`-th frame in display order, reading the video once, scaled down to `max_side`
    and turned as the video's display matrix says (as players show it), with FFmpeg's threads.

    A frame between samples is never converted, and one that no other frame is decoded from (most
    B-frames) is not even decoded (FFmpeg's `skip_frame`): a sampled frame's pixels are the same.
    Memory holds the few packets and frames that the codec reorders; the decoder refuses a frame
    larger than 8K whatever the header declared (FFmpeg's `max_pixels`), and a video that holds more
    than `max_frames` frames stops with VideoError. Whatever else the demuxer or decoder raises for a
    crafted file is a VideoError too: it costs the file's job, never the runner."""
    container = open_video(path)
    last = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"max_pixels": str(MAX_VIDEO_PIXELS)}
        for index, decoded in _sampled(container, stream, stride):
            if max_frames is not None and index >= max_frames:
                raise VideoError(f"the video holds more than the limit of {max_frames} frames")
            if index > last:  # a timestamp given twice (a damaged file) yields one frame, not two
                last = index
                yield _frame(index, decoded, max_side)
    except (VideoError, GeneratorExit):
        raise
    except Exception as error:  # noqa: BLE001 - whatever a hostile file makes the demuxer raise
        where = f"after frame {last}" if last >= 0 else "at its start"
        raise VideoError(f"the video could not be decoded {where} ({type(error).__name__})") from error
    finally:
        container.close()


def _frame(index: int, decoded: av.VideoFrame, max_side: int | None) -> Frame:
    """Scale (FFmpeg's area filter, in the decoder's YUV 4:2:0, to even sides) and turn: the colours are
    converted once, in inference, from the samples the video holds."""
    width, height = decoded.width, decoded.height
    to_width, to_height = (even(side) for side in scaled_size(width, height, max_side))
    image: np.ndarray = decoded.to_ndarray(width=to_width, height=to_height, format="yuv420p", interpolation="AREA")
    turns = round((decoded.rotation or 0) / 90) % 4  # counterclockwise quarter turns
    if turns:
        image = rotated(image, turns)
        if turns % 2:
            width, height = height, width
    return Frame(index, image, width, height)


def _sampled(container: InputContainer, stream: VideoStream, stride: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(Display index, frame) of every `stride`-th frame. A packet's display index is the rank of its
    timestamp, known once REORDER_WINDOW later packets were read; with it the decoder is told before
    each packet whether its frame may be skipped. A stream without timestamps is decoded whole."""
    context = stream.codec_context
    packets = (packet for packet in container.demux(stream) if packet.size)
    first = next(packets, None)
    if first is None:
        return
    if first.pts is None:
        for shown, decoded in enumerate(frame for packet in itertools.chain([first], packets, [None])
                                        for frame in _decode(context, packet)):  # fmt: skip
            if shown % stride == 0:
                yield shown, decoded
        return
    waiting: deque[av.Packet] = deque()  # read, not sent to the decoder yet
    timestamps: list[int] = []  # a heap of the waiting packets' timestamps, not ranked yet
    ranks: dict[int, int] = {}  # timestamp -> display index, of waiting packets and of sampled ones sent
    ranked = 0
    for packet in itertools.chain([first], packets, [None]):
        if packet is not None:
            waiting.append(packet)
            if packet.pts is not None:
                heapq.heappush(timestamps, packet.pts)
        while timestamps and (packet is None or len(timestamps) > REORDER_WINDOW):
            ranks[heapq.heappop(timestamps)] = ranked
            ranked += 1
        # the oldest packet goes to the decoder once its rank is known (or, for a damaged file that gives
        # a timestamp twice, once too many packets wait behind it: decoded whole, it costs only time)
        while waiting and (packet is None or waiting[0].pts is None or waiting[0].pts in ranks
                           or len(waiting) > 2 * REORDER_WINDOW):  # fmt: skip
            sent = waiting.popleft()
            unwanted = (pts := sent.pts) is not None and pts in ranks and ranks[pts] % stride != 0
            if pts is not None and unwanted:
                del ranks[pts]  # its frame, decoded or skipped, is not wanted
            context.skip_frame = "NONREF" if unwanted else "DEFAULT"
            yield from _wanted(_decode(context, sent), ranks)
    context.skip_frame = "DEFAULT"
    yield from _wanted(_decode(context, None), ranks)


def _wanted(frames: list[av.VideoFrame], ranks: dict[int, int]) -> Iterator[tuple[int, av.VideoFrame]]:
    """The sampled frames among those the decoder gave, with their display index."""
    for decoded in frames:
        if decoded.pts is not None and (shown := ranks.pop(decoded.pts, None)) is not None:
            for lost in [pts for pts, rank in ranks.items() if rank < shown]:
                del ranks[lost]  # a sampled frame the decoder never gave (a damaged packet): forgotten
            yield shown, decoded


def _decode(context: VideoCodecContext, packet: av.Packet | None) -> list[av.VideoFrame]:
    """The frames a packet completes (None: the decoder's last frames). A damaged packet loses its own
    frame and the video goes on, as players do. Every frame's size is checked, sampled or not: a
    header may declare 64x48 and the frames be larger (FFmpeg's `max_pixels` stops the largest)."""
    try:
        frames = context.decode(packet)
    except av.FFmpegError:
        return []
    for frame in frames:
        if max(frame.width, frame.height) > MAX_VIDEO_SIDE or frame.width * frame.height > MAX_VIDEO_PIXELS:
            raise VideoError(f"a frame is {frame.width}x{frame.height} pixels, larger than the 8K the runner decodes")
    return frames


@dataclass(frozen=True)
class Encoded:
    encoding: str  # "i420" or "jpeg" (InferenceTask.encoding)
    data: bytes
    width: int
    height: int


def frame_task(event_id: str, frame: Frame, encoded: Encoded, model: str | None = None) -> InferenceTask:
    """The `inference_tasks` message of one encoded frame (`model`: its sha256; None: the workers' default)."""
    return InferenceTask(event_id=event_id, frame=frame.index, encoding=encoded.encoding, image=encoded.data,
                         image_width=encoded.width, image_height=encoded.height, width=frame.width,
                         height=frame.height, model=model)  # fmt: skip


def encode_frame(frame: Frame, encoding: str = "i420", quality: int = 90) -> Encoded:
    """A frame for `inference_tasks` (JPEG in the runner's encoding threads).

    `i420` (FRAME_ENCODING's default) sends the samples as the decoder gave them, scaled: 1.5 bytes a
    pixel, nothing lost. `jpeg` is a third to a sixth of the bytes, for links short of bandwidth, at a
    cost in agreement (docs/performance.md). A frame over MAX_FRAME_BYTES raw (a model input above
    2000 pixels square) goes as JPEG; a JPEG that would pass it is encoded again at a lower quality, so
    a frame message never exceeds what the topic takes."""
    width, height = frame.size
    if encoding == "i420" and frame.image.nbytes <= MAX_FRAME_BYTES:
        return Encoded("i420", frame.image.tobytes(), width, height)
    image = frame.bgr()
    while True:
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise VideoError("a frame could not be encoded as JPEG")
        if jpeg.nbytes <= MAX_FRAME_BYTES or quality <= MIN_JPEG_QUALITY:
            break
        quality = max(MIN_JPEG_QUALITY, quality - 15)
    if jpeg.nbytes > MAX_FRAME_BYTES:
        raise VideoError(f"a frame is too large to send even as JPEG quality {MIN_JPEG_QUALITY}")
    return Encoded("jpeg", jpeg.tobytes(), width, height)
