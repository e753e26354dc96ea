"""Track ids across a job's sampled frames, in frame order: Roboflow's `trackers` (ByteTrack, Apache-2.0).

The tracker sees only the sampled frames, so it is configured for their rate (the video's fps divided
by the stride), and each update carries the frame's time: a track lost for `LOST_S` seconds of video
ends, whatever the stride. Every box is kept as the detector gave it; a box the tracker has not
confirmed yet (its first sampled frame, or a low-confidence box matching no track), or beyond a frame's
MAX_TRACKED most confident, has no `track_id`.
"""

import warnings
from typing import Any

import numpy as np

with warnings.catch_warnings():  # supervision warns about its own deprecations on import
    warnings.simplefilter("ignore")
    import supervision as sv
    from trackers import ByteTrackTracker

LOST_S = 2.0  # a track is kept this long without a match (occlusions, missed detections)
HIGH_CONF = 0.4  # ByteTrack's first association stage; lower boxes only continue tracks
NEW_TRACK_CONF = 0.6  # a track starts from a box at least this confident (fewer tracks of passing false boxes)
# of a track's predicted box and a detection, to match them: low, since between sampled frames (5 a second
# at 25 fps) an object moves a good part of its width
MIN_IOU = 0.05
CONFIRM_FRAMES = 2  # sampled frames in a row before a track gets its id
# a frame's most confident boxes tracked, at most: tracking costs about 0.05 ms a box (300: 16 ms a frame;
# 1,550, what a crowd under a loose NMS gives: 133 ms), and the rest of a crowd is rarely what is counted
MAX_TRACKED = 300


class Tracker:
    """One job's tracker: `update` each sampled frame's objects, in frame order. Each class is tracked
    on its own (a track never turns from a car into a person at a scene cut); ids are unique in the job."""

    def __init__(self, fps: float, stride: int) -> None:
        self.fps, self.rate = fps, fps / stride
        self.by_class: dict[str, ByteTrackTracker] = {}
        self.ids: dict[tuple[str, int], int] = {}  # (class, the class's tracker's id) -> the job's id

    def tracker(self, name: str) -> ByteTrackTracker:
        if (found := self.by_class.get(name)) is None:
            found = self.by_class[name] = ByteTrackTracker(
                lost_track_buffer=round(LOST_S * 30),  # the library counts it in frames at 30 fps
                frame_rate=self.rate,
                track_activation_threshold=NEW_TRACK_CONF,
                minimum_consecutive_frames=CONFIRM_FRAMES,
                minimum_iou_threshold=MIN_IOU,
                high_conf_det_threshold=HIGH_CONF,
            )
        return found

    def update(self, frame: int, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The frame's objects (`{"class", "box", "conf"}`), each with its `track_id` where it has one.
        Every class's tracker sees every frame (an empty one too: its tracks age)."""
        out = [{key: value for key, value in found.items() if key != "track_id"} for found in objects]
        chosen: list[int] = list(range(len(objects)))
        if len(objects) > MAX_TRACKED:
            chosen = sorted(sorted(chosen, key=lambda i: -objects[i]["conf"])[:MAX_TRACKED])
        names = {objects[i]["class"] for i in chosen} | set(self.by_class)
        for name in sorted(names):
            indices = [i for i in chosen if objects[i]["class"] == name]
            boxes = np.array([objects[i]["box"] for i in indices], dtype=np.float32).reshape(-1, 4)
            confidence = np.array([objects[i]["conf"] for i in indices], dtype=np.float32)
            detections = sv.Detections(xyxy=boxes, confidence=confidence, data={"index": np.array(indices, dtype=int)})
            tracked = self.tracker(name).update(detections, timestamp=frame / self.fps)
            if not len(tracked) or tracked.tracker_id is None:
                continue
            for index, local in zip(
                np.asarray(tracked.data["index"]).tolist(), tracked.tracker_id.tolist(), strict=True
            ):
                if local >= 0:
                    out[index]["track_id"] = self.ids.setdefault((name, local), len(self.ids) + 1)
        return out
