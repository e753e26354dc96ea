"""Crafted videos of the red-team pass (issue: hostile input), made at test time: small and deterministic.

`mjpeg_mp4` writes an MP4 box by box, so that what its sample table declares (frame count, size) can
differ from what its samples hold, as a hostile file's does."""

import asyncio
import contextlib
import io
import struct
from typing import cast

import av
import cv2
import numpy as np
from av.video.stream import VideoStream


def box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, *parts: bytes, version: int = 0, flags: int = 0) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags), *parts)


MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def jpeg(width: int, height: int, seed: int = 0, pad_to: int = 0) -> bytes:
    """A JPEG of one colour (a few KB even when large), padded after its end marker to `pad_to` bytes."""
    image = np.full((height, width, 3), (seed * 37) % 256, np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes().ljust(pad_to, b"\0")


def mjpeg_mp4(samples: list[bytes], declared: tuple[int, int], frames: int | None = None, fps: int = 25) -> bytes:
    """An MP4 of Motion-JPEG samples whose header declares `declared` (width, height) and `frames` samples
    (default: one per sample given). With more frames than samples, every sample must have the same size:
    the sample table then says `frames` samples of that size, in `len(samples)` chunks."""
    frames = frames or len(samples)
    ftyp = box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2mp41")
    mdat = box(b"mdat", *samples)
    first = len(ftyp) + 8
    offsets, at = [], first
    for sample in samples:
        offsets.append(at)
        at += len(sample)
    if frames == len(samples):
        stsc = full_box(b"stsc", struct.pack(">I3I", 1, 1, 1, 1))
        stsz = full_box(b"stsz", struct.pack(">II", 0, frames), *(struct.pack(">I", len(s)) for s in samples))
    else:
        assert len({len(s) for s in samples}) == 1 and frames % len(samples) == 0
        stsc = full_box(b"stsc", struct.pack(">I3I", 1, 1, frames // len(samples), 1))
        stsz = full_box(b"stsz", struct.pack(">II", len(samples[0]), frames))
    width, height = declared
    entry = box(b"jpeg", bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", width, height),
                struct.pack(">III", 0x480000, 0x480000, 0), struct.pack(">H", 1), bytes(32),
                struct.pack(">Hh", 24, -1))  # fmt: skip
    stbl = box(
        b"stbl",
        full_box(b"stsd", struct.pack(">I", 1), entry),
        full_box(b"stts", struct.pack(">III", 1, frames, 1)),
        stsc,
        stsz,
        full_box(b"stco", struct.pack(">I", len(offsets)), *(struct.pack(">I", o) for o in offsets)),
    )
    dinf = box(b"dinf", full_box(b"dref", struct.pack(">I", 1), full_box(b"url ", flags=1)))
    minf = box(b"minf", full_box(b"vmhd", bytes(8), flags=1), dinf, stbl)
    mdhd = full_box(b"mdhd", struct.pack(">IIIIHH", 0, 0, fps, frames, 0x55C4, 0))
    hdlr = full_box(b"hdlr", bytes(4), b"vide", bytes(12), b"\0")
    duration = frames * 1000 // fps
    tkhd = full_box(b"tkhd", struct.pack(">IIIII", 0, 0, 1, 0, duration), bytes(8), struct.pack(">hhhH", 0, 0, 0, 0),
                    MATRIX, struct.pack(">II", width << 16, height << 16), flags=3)  # fmt: skip
    mvhd = full_box(b"mvhd", struct.pack(">IIIIIH", 0, 0, 1000, duration, 0x10000, 0x100), bytes(10), MATRIX,
                    bytes(24), struct.pack(">I", 2))  # fmt: skip
    moov = box(b"moov", mvhd, box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf)))
    return ftyp + mdat + moov


def two_programs_ts(first_frames: int = 30) -> bytes:
    """An MPEG-TS of two programs back to back: the second one's stream appears only after FFmpeg's
    probe, while the file is read (PyAV's demuxer then raised IndexError)."""

    def program(service: int, pid: int, frames: int, codec: str) -> bytes:
        buffer = io.BytesIO()
        options = {"mpegts_service_id": str(service), "mpegts_start_pid": str(pid),
                   "mpegts_pmt_start_pid": str(pid - 0x10)}  # fmt: skip
        with av.open(buffer, "w", format="mpegts", options=options) as out:
            stream = cast(VideoStream, out.add_stream(codec, rate=25))
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for index in range(frames):
                image = np.full((48, 64, 3), index * 10 % 255, np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(stream.encode())
        return buffer.getvalue()

    return program(1, 0x100, first_frames, "mpeg2video") + program(2, 0x300, 10, "mpeg4")


def frame_bomb(frames: int = 80_000_000, samples: int = 1000) -> bytes:
    """About 1 MB whose sample table declares `frames` frames over `samples` tiny JPEGs: opening it made
    FFmpeg build an index of 3 GB."""
    return mjpeg_mp4([jpeg(16, 16, i, pad_to=1000) for i in range(samples)], (16, 16), frames=frames)


def larger_than_declared(width: int, height: int) -> bytes:
    """An MJPEG MP4 whose header and first frame say 64x48, and whose next frames are `width`x`height`."""
    return mjpeg_mp4([jpeg(64, 48)] + [jpeg(width, height, i) for i in range(1, 3)], (64, 48))


def seed_videos(hostile: bool = True) -> dict[str, bytes]:
    """Small real videos in the containers users upload (the fuzzer's seeds, the mutation test's inputs),
    and, with `hostile`, the crafted ones above."""
    kinds = {"mp4": ("mp4", "mpeg4"), "mkv": ("matroska", "mpeg4"), "avi": ("avi", "mjpeg"),
             "ts": ("mpegts", "mpeg2video"), "webm": ("webm", "libvpx")}  # fmt: skip
    seeds = {}
    for extension, (container, codec) in kinds.items():
        buffer = io.BytesIO()
        with av.open(buffer, "w", format=container) as out:
            stream = cast(VideoStream, out.add_stream(codec, rate=10))
            stream.width, stream.height = 32, 24
            stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            for index in range(12):
                image = np.full((24, 32, 3), index * 20, np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            out.mux(stream.encode())
        seeds[f"seed.{extension}"] = buffer.getvalue()
    if hostile:
        seeds["two_programs.ts"] = two_programs_ts()
        seeds["larger_than_declared.mp4"] = larger_than_declared(640, 480)
    return seeds


async def webhook_receiver(kind: str, drip_s: float = 0.5) -> asyncio.Server:
    """A webhook receiver that fights back, on a free loopback port (`server.sockets[0]`). `drip-headers`:
    reads the request, then sends its answer's headers a byte every `drip_s`; `drip-body`: answers 200
    at once, then its body a byte every `drip_s`; `big-body`: answers 200 with 600 MB, as fast as it goes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 629145600\r\n\r\n"
            if kind == "drip-headers":
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(drip_s)
            writer.write(head)
            chunk = b"\0" * (1 if kind == "drip-body" else 1024 * 1024)
            for _ in range(600 if kind == "big-body" else 10_000):
                writer.write(chunk)
                await writer.drain()
                if kind == "drip-body":
                    await asyncio.sleep(drip_s)
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)
