"""A result in the formats people load elsewhere, streamed from its frames (never the whole result held):
CSV rows, MOT Challenge text (tracks), COCO-style JSON (the sampled frames as images)."""

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

Format = Literal["json", "csv", "mot", "coco"]
CSV_HEADER = ["event_id", "frame", "class", "conf", "x1", "y1", "x2", "y2", "track_id"]
MEDIA_TYPES = {"csv": "text/csv", "mot": "text/plain", "coco": "application/json"}
SUFFIXES = {"csv": "csv", "mot": "txt", "coco": "coco.json"}
Frames = Iterable[dict[str, Any]]


def _lines(rows: Iterable[list[Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def csv_text(event_id: str, frames: Frames, header: bool = True) -> Iterator[str]:
    """`event_id,frame,class,conf,x1,y1,x2,y2,track_id`: one row per object (track_id empty without one)."""

    def rows() -> Iterator[list[Any]]:
        if header:
            yield CSV_HEADER
        for frame in frames:
            for found in frame["objects"]:
                yield [
                    event_id,
                    frame["frame"],
                    found["class"],
                    found["conf"],
                    *found["box"],
                    found.get("track_id", ""),
                ]

    return _lines(rows())


def mot_text(frames: Frames) -> Iterator[str]:
    """MOT Challenge results: `frame,id,x,y,w,h,conf,-1,-1,-1` for each tracked object, frames counted
    from 1 (the video's frame numbers, so a sampled video leaves gaps); untracked boxes are left out."""
    for frame in frames:
        lines = []
        for found in frame["objects"]:
            if (track := found.get("track_id")) is None:
                continue
            x1, y1, x2, y2 = found["box"]
            lines.append(f"{frame['frame'] + 1},{track},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                         f"{found['conf']:.4f},-1,-1,-1\n")  # fmt: skip
        if lines:
            yield "".join(lines)


def coco_json(head: dict[str, Any], frames: Callable[[], Frames]) -> Iterator[str]:
    """COCO-style JSON: every sampled frame an image (`id` its frame number + 1), every object an
    annotation (`bbox` x, y, w, h; with `score` and `track_id`), the classes as categories in the order
    first seen. Two passes over `frames` (images, then annotations), so nothing grows with the video."""
    width, height = head.get("width"), head.get("height")
    categories: dict[str, int] = {}
    yield json.dumps({"info": {"description": f"vdetect job {head.get('event_id')}", "fps": head.get("fps")}})[:-1]
    yield ',"images":['
    for count, frame in enumerate(frames()):
        index = frame["frame"]
        image = {"id": index + 1, "file_name": f"frame_{index:06d}.jpg", "frame_index": index, "width": width,
                 "height": height}  # fmt: skip
        yield ("," if count else "") + json.dumps(image)
        for found in frame["objects"]:
            categories.setdefault(found["class"], len(categories) + 1)
    yield '],"annotations":['
    number = 0
    for frame in frames():
        for found in frame["objects"]:
            x1, y1, x2, y2 = found["box"]
            number += 1
            annotation = {"id": number, "image_id": frame["frame"] + 1, "category_id": categories[found["class"]],
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                          "score": found["conf"]}  # fmt: skip
            if "track_id" in found:
                annotation["track_id"] = found["track_id"]
            yield ("," if number > 1 else "") + json.dumps(annotation)
    yield '],"categories":' + json.dumps([{"id": i, "name": name} for name, i in categories.items()]) + "}"


def text(output: Format, head: dict[str, Any], frames: Callable[[], Frames], header: bool = True) -> Iterator[str]:
    """A result (its header's members, and its frames, read afresh by each call) in `output` (not json)."""
    if output == "csv":
        return csv_text(head["event_id"], frames(), header)
    if output == "mot":
        return mot_text(frames())
    return coco_json(head, frames)
