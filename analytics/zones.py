"""Lines and polygons: crossings in and out of a line, entries, exits, time inside and occupancy of a
polygon, per class, from tracked objects in frame order. Pure: `Counter.add` each sampled frame.

An object's position is the bottom centre of its box, where a person or a car meets the ground. A
line counts a crossing when an object's position moves from one side of it to the other across the
segment itself (not its extension); a position exactly on the line belongs to the side it came from.
Memory: a track's last position, forgotten once the track has not been seen for `FORGET_S`; the
events kept are at most MAX_CROSSINGS per zone (the counts stay exact).
"""

from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from events.contracts import Crossing, Occupancy, Zone, ZoneCounts

MAX_CROSSINGS = 10_000
MAX_OCCUPANCY_POINTS = 1_000
FORGET_S = 10.0
Point = tuple[float, float]


def position(box: list[float]) -> Point:
    return (box[0] + box[2]) / 2, box[3]


def side(a: Point, b: Point, p: Point) -> float:
    """> 0: `p` is on the side `a -> b` turns to clockwise on the screen (y down); < 0 the other; 0 on it."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crosses(a: Point, b: Point, p: Point, q: Point) -> bool:
    """Whether the move p -> q crosses the segment a-b (touching an end counts)."""
    d1, d2 = side(a, b, p), side(a, b, q)
    d3, d4 = side(p, q, a), side(p, q, b)
    return d1 * d2 < 0 and d3 * d4 <= 0


def inside(polygon: list[Point], p: Point) -> bool:
    """Ray casting: an even-odd test of `p` against the polygon."""
    x, y, found = p[0], p[1], False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            found = not found
    return found


class Counter:
    """One zone's counts over a job's tracked frames."""

    def __init__(self, zone: Zone, duration_s: float | None = None) -> None:
        self.zone = zone
        self.points: list[Point] = list(zone.points)
        self.counts: dict[str, Tally[str]] = defaultdict(Tally)
        self.seconds: dict[str, float] = defaultdict(float)  # per class, time inside a polygon
        self.crossings: list[Crossing] = []
        self.omitted = 0
        self.last: dict[int, tuple[float, Point, bool]] = {}  # track -> when last seen, where, inside
        self.bucket_s = max(1.0, (duration_s or 0.0) / MAX_OCCUPANCY_POINTS)
        self.occupancy: dict[int, Tally] = {}  # bucket -> class -> the most inside at once

    def event(self, found: dict[str, Any], frame: int, time_s: float, direction: str, count: str) -> None:
        self.counts[found["class"]][count] += 1
        if len(self.crossings) < MAX_CROSSINGS:
            self.crossings.append(Crossing(track_id=found["track_id"], class_name=found["class"], frame=frame,
                                           time_s=round(time_s, 3), direction=direction))  # fmt: skip
        else:
            self.omitted += 1

    def add(self, frame: int, time_s: float, objects: Iterable[dict[str, Any]]) -> None:
        polygon = self.zone.kind == "polygon"
        here: Tally = Tally()
        for found in objects:
            if (track := found.get("track_id")) is None:
                continue
            now = position(found["box"])
            within = polygon and inside(self.points, now)
            before = self.last.get(track)
            if polygon:
                if within and (before is None or not before[2]):
                    self.event(found, frame, time_s, "entered", "entered")
                elif not within and before is not None and before[2]:
                    self.event(found, frame, time_s, "exited", "exited")
                if within:
                    here[found["class"]] += 1
                    if before is not None and before[2]:
                        self.seconds[found["class"]] += time_s - before[0]
            else:
                if side(self.points[0], self.points[1], now) == 0 and before is not None:
                    now = before[1]  # on the line: the side it comes from is kept until it leaves it
                elif before is not None and crosses(self.points[0], self.points[1], before[1], now):
                    way = "in" if side(self.points[0], self.points[1], now) > 0 else "out"
                    self.event(found, frame, time_s, way, way)
            self.last[track] = (time_s, now, within)
        if polygon:
            bucket = self.occupancy.setdefault(int(time_s // self.bucket_s), Tally())
            for name, count in here.items():
                bucket[name] = max(bucket[name], count)
        self.last = {track: seen for track, seen in self.last.items() if time_s - seen[0] <= FORGET_S}

    def result(self) -> ZoneCounts:
        polygon = self.zone.kind == "polygon"
        counts: dict[str, dict[str, int | float]] = {}
        for name in sorted(set(self.counts) | set(self.seconds)):
            tally = self.counts[name]
            counts[name] = {"entered": tally["entered"], "exited": tally["exited"],
                            "seconds": round(self.seconds[name], 3)} if polygon else {
                            "in": tally["in"], "out": tally["out"]}  # fmt: skip
        occupancy = None
        if self.zone.kind == "polygon":
            occupancy = [Occupancy(time_s=round(bucket * self.bucket_s, 3), count=dict(tally))
                         for bucket, tally in sorted(self.occupancy.items())]  # fmt: skip
        return ZoneCounts(kind=self.zone.kind, points=self.points, counts=counts, crossings=self.crossings,
                          omitted=self.omitted, occupancy=occupancy)  # fmt: skip


class Zones:
    """Every zone of a job at once."""

    def __init__(self, zones: list[Zone], duration_s: float | None = None) -> None:
        self.counters = [Counter(zone, duration_s) for zone in zones]

    def add(self, frame: int, time_s: float, objects: list[dict[str, Any]]) -> None:
        for counter in self.counters:
            counter.add(frame, time_s, objects)

    def result(self) -> dict[str, ZoneCounts]:
        return {counter.zone.name: counter.result() for counter in self.counters}
