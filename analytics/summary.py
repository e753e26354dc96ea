"""Counts that mean something: per class, distinct tracked objects, the most at once, first and last seen.

A track's class is the one it was detected as most often (a detector may call the same van `car` in one
frame and `truck` in the next). Memory: a few numbers per track, never per frame.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from events.contracts import ClassSummary, Summary


@dataclass
class Seen:
    classes: Counter = field(default_factory=Counter)
    first_s: float = 0.0
    last_s: float = 0.0


class Summarizer:
    def __init__(self) -> None:
        self.tracks: dict[int, Seen] = {}
        self.at_once: Counter = Counter()

    def add(self, time_s: float, objects: list[dict[str, Any]]) -> None:
        """One sampled frame's objects, in frame order; those without a `track_id` are not counted."""
        here: Counter = Counter()
        for found in objects:
            if (track := found.get("track_id")) is None:
                continue
            seen = self.tracks.get(track)
            if seen is None:
                seen = self.tracks[track] = Seen(first_s=time_s)
            seen.classes[found["class"]] += 1
            seen.last_s = time_s
            here[found["class"]] += 1
        for name, count in here.items():
            self.at_once[name] = max(self.at_once[name], count)

    def result(self) -> Summary:
        classes: dict[str, ClassSummary] = {}
        for seen in self.tracks.values():
            name = seen.classes.most_common(1)[0][0]
            if (entry := classes.get(name)) is None:
                classes[name] = ClassSummary(tracks=1, max_at_once=0, first_s=seen.first_s, last_s=seen.last_s)
            else:
                entry.tracks += 1
                entry.first_s, entry.last_s = min(entry.first_s, seen.first_s), max(entry.last_s, seen.last_s)
        for name, entry in classes.items():
            entry.max_at_once = self.at_once[name]
            entry.first_s, entry.last_s = round(entry.first_s, 3), round(entry.last_s, 3)
        return Summary(classes=dict(sorted(classes.items())))
