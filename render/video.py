"""Rendering: the original video decoded frame by frame (the runner's own decoding, so frame numbers and
orientation are the result's), each frame drawn with its objects (interpolated between sampled frames)
and the zones, encoded to H.264 (libx264, yuv420p, `+faststart`: a browser plays it while it loads).

Memory is flat in the video's length: one decoded frame, the two sampled frames around it (read from the
detection file as the video goes, never the whole result) and the encoder's own look-ahead."""

import time
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import ijson

from events import detection_file
from render import draw
from render.interpolate import between
from runner.frames import sample_frames, video_info

CRF = "23"
PRESET = "veryfast"


class RenderError(Exception):
    """The annotated video cannot be made (a reason for the client)."""


def zones_of(result: Path) -> dict[str, dict[str, Any]]:
    """The zones block after a detection file's prediction (read past the frames, holding none of them)."""
    with result.open("rb") as source:
        for found in ijson.items(source, "zones", use_float=True):
            return found or {}
    return {}


class SoFar:
    """Each zone's counts up to a frame, from its crossings in time order."""

    def __init__(self, zones: dict[str, dict[str, Any]]) -> None:
        self.pending = {name: iter(zone.get("crossings", [])) for name, zone in zones.items()}
        self.next = {name: next(events, None) for name, events in self.pending.items()}
        self.counts: dict[str, Counter] = {name: Counter() for name in zones}

    def at(self, frame: int) -> dict[str, Counter]:
        for name, event in self.next.items():
            while event is not None and event["frame"] <= frame:
                self.counts[name][event["direction"]] += 1
                event = next(self.pending[name], None)
            self.next[name] = event
        return self.counts


def sampled(result: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    for frame in detection_file.frames(result):
        yield frame["frame"], frame["objects"]


def render(video: Path, result: Path, out: Path, max_seconds: float) -> int:
    """Write the annotated MP4 of `video` with `result` (a detection file) to `out`; returns its frames."""
    started = time.monotonic()
    info = video_info(video)
    zones = zones_of(result)
    so_far = SoFar(zones)
    frames = sampled(result)
    current, upcoming = next(frames, None), next(frames, None)
    rate = Fraction(info.fps or 25).limit_denominator(1001)
    written = 0
    with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        stream: Any = None
        for decoded in sample_frames(video, 1):
            image = decoded.bgr()
            if stream is None:
                stream = output.add_stream("libx264", rate=rate, options={"crf": CRF, "preset": PRESET})
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
            while upcoming is not None and upcoming[0] <= decoded.index:
                current, upcoming = upcoming, next(frames, None)
            if current is not None and current[0] <= decoded.index:
                span = (upcoming[0] - current[0]) if upcoming is not None else 0
                t = (decoded.index - current[0]) / span if span else 0.0
                draw.objects(image, between(current[1], upcoming[1] if upcoming else None, t))
            draw.zones(image, zones, so_far.at(decoded.index))
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = written
            output.mux(stream.encode(frame))
            written += 1
            if time.monotonic() - started > max_seconds:
                raise RenderError(f"rendering took longer than RENDER_MAX_SECONDS ({max_seconds:.0f} s)")
        if stream is None:
            raise RenderError("the video has no decodable frames")
        output.mux(stream.encode(None))
    return written
