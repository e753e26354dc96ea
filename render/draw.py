"""Drawing on a frame (BGR, in place): boxes, labels and track ids, and the zones with their counts. Pure
apart from the pixels it is given."""

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]  # fmt: skip
ZONE = (0, 220, 255)
UNTRACKED = (200, 200, 200)


def colour(found: dict[str, Any]) -> tuple[int, int, int]:
    track = found.get("track_id")
    return UNTRACKED if track is None else PALETTE[track % len(PALETTE)]


def scale_of(height: int) -> tuple[float, int]:
    """Font scale and line thickness for a frame of this height (readable from 240p to 4K)."""
    return max(height / 900, 0.35), max(round(height / 450), 1)


def label(image: np.ndarray, text: str, x: int, y: int, fill: tuple[int, int, int], font: float, thick: int) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
    y = max(y, h + base)
    cv2.rectangle(image, (x, y - h - base), (x + w, y), fill, -1)
    cv2.putText(image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thick, cv2.LINE_AA)


def objects(image: np.ndarray, found: list[dict[str, Any]]) -> None:
    font, thick = scale_of(image.shape[0])
    for each in found:
        x1, y1, x2, y2 = (round(v) for v in each["box"])
        fill = colour(each)
        cv2.rectangle(image, (x1, y1), (x2, y2), fill, thick)
        track = f" #{each['track_id']}" if "track_id" in each else ""
        label(image, f"{each['class']}{track} {each['conf']:.2f}", x1, y1, fill, font, thick)


def zones(image: np.ndarray, counted: dict[str, dict[str, Any]], so_far: Mapping[str, Mapping[str, int]]) -> None:
    """Each zone's outline, and its name with its counts so far (`so_far`: per zone, per direction)."""
    font, thick = scale_of(image.shape[0])
    for name, zone in counted.items():
        points = np.array([[round(x), round(y)] for x, y in zone["points"]], dtype=np.int32)
        cv2.polylines(image, [points], zone["kind"] == "polygon", ZONE, thick + 1, cv2.LINE_AA)
        keys = ("in", "out") if zone["kind"] == "line" else ("entered", "exited")
        text = f"{name}: " + " ".join(f"{key} {so_far.get(name, {}).get(key, 0)}" for key in keys)
        label(image, text, int(points[:, 0].min()), int(points[:, 1].min()), (0, 140, 200), font, thick)
