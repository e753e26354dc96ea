"""A job's frames, in frame order, through its tracker, summary and zones: what the S3 relay runs while it
writes the detection file, and what recounts a finished job's stored tracks for new zones."""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from analytics.summary import Summarizer
from analytics.tracking import Tracker
from analytics.zones import Zones
from events.contracts import JobOptions, Zone, ZoneCounts

UNKNOWN_FPS = 25.0  # a container that gives no frame rate: times are approximate


def duration_s(total_frames: int | None, stride: int | None, fps: float) -> float | None:
    """The video's length from its sampled frames, if known (occupancy's intervals follow it)."""
    return total_frames * (stride or 1) / fps if total_frames else None


class Analysis:
    def __init__(self, options: JobOptions | None, fps: float | None, stride: int | None,
                 total_frames: int | None = None) -> None:  # fmt: skip
        options = options or JobOptions()
        self.fps = fps or UNKNOWN_FPS
        self.tracker = Tracker(self.fps, stride or 1) if options.track else None
        self.summary = Summarizer() if options.track else None
        self.zones = Zones(options.zones, duration_s(total_frames, stride, self.fps)) if options.zones else None

    @property
    def tracked(self) -> bool:
        return self.tracker is not None

    def frame(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A frame document (`{"frame", "objects"}`), its objects tracked, counted in the summary and zones."""
        if self.tracker is None:
            return doc
        objects = self.tracker.update(doc["frame"], doc["objects"])
        time_s = doc["frame"] / self.fps
        if self.summary is not None:
            self.summary.add(time_s, objects)
        if self.zones is not None:
            self.zones.add(doc["frame"], time_s, objects)
        return {**doc, "objects": objects}

    async def frames(self, docs: AsyncIterable[dict[str, Any]], batch: int = 500) -> AsyncIterator[dict[str, Any]]:
        """`docs` tracked, a batch at a time in a thread: a dense video's tracking never holds up the caller's
        event loop (the relay's other work goes on meanwhile)."""
        pending: list[dict[str, Any]] = []
        async for doc in docs:
            pending.append(doc)
            if len(pending) >= batch:
                for done in await asyncio.to_thread(self.batch, pending):
                    yield done
                pending = []
        for done in await asyncio.to_thread(self.batch, pending) if pending else []:
            yield done

    def batch(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.frame(doc) for doc in docs]

    def tail(self) -> dict[str, Any]:
        """What the detection file holds after its `prediction`: the summary and the zones' counts."""
        tail: dict[str, Any] = {}
        if self.summary is not None:
            tail["summary"] = self.summary.result().to_mongo()
        if self.zones is not None:
            tail["zones"] = {name: counts.to_mongo() for name, counts in self.zones.result().items()}
        return tail


def recount(zones: list[Zone], frames: Iterable[dict[str, Any]], fps: float | None,
            total_frames: int | None = None, stride: int | None = None) -> dict[str, ZoneCounts]:  # fmt: skip
    """New zones' counts from a finished job's tracked frames (their stored `track_id`s): no detecting,
    no tracking again."""
    fps = fps or UNKNOWN_FPS
    counters = Zones(zones, duration_s(total_frames, stride, fps))
    for frame in frames:
        counters.add(frame["frame"], frame["frame"] / fps, frame["objects"])
    return counters.result()
