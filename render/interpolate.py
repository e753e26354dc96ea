"""Boxes between sampled frames: a track seen at two sampled frames moves in a straight line between
them; any other box stays where it was until the next sampled frame. Pure."""

from typing import Any

Objects = list[dict[str, Any]]


def between(before: Objects, after: Objects | None, t: float) -> Objects:
    """The objects to draw at fraction `t` (0 <= t < 1) of the way from one sampled frame to the next
    (`after` None: past the last sampled frame, held as they were)."""
    if t <= 0 or not after:
        return before
    later = {found["track_id"]: found for found in after if "track_id" in found}
    shown = []
    for found in before:
        target = later.get(found.get("track_id", -1))
        if target is None:
            shown.append(found)
            continue
        box = [a + (b - a) * t for a, b in zip(found["box"], target["box"], strict=True)]
        shown.append({**found, "box": box})
    return shown
