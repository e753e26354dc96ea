"""The pure cores of tracking, counting, zones, exports and the annotated video's boxes."""

import json

import pytest

from analytics import exports
from analytics.analysis import Analysis, recount
from analytics.summary import Summarizer
from analytics.tracking import Tracker
from analytics.zones import Counter, crosses, inside, side
from events.contracts import JobOptions, LineZone, PolygonZone, Zone
from render.interpolate import between


def walker(frame: int, x0: float = 0.0, speed: float = 10.0, cls: str = "person") -> dict:
    """A box moving right by `speed` pixels a frame, 40 wide and 80 high."""
    x = x0 + speed * frame
    return {"class": cls, "box": [x, 100.0, x + 40, 180.0], "conf": 0.9}


def tracked(frames: list[tuple[int, list[dict]]], stride: int = 5, fps: float = 25.0) -> list[list[dict]]:
    tracker = Tracker(fps, stride)
    return [tracker.update(frame, objects) for frame, objects in frames]


def test_a_moving_object_keeps_one_id_from_its_second_sampled_frame() -> None:
    out = tracked([(f, [walker(f, speed=4)]) for f in range(0, 100, 5)])
    assert "track_id" not in out[0][0]  # confirmed on its second sampled frame
    assert {o[0]["track_id"] for o in out[1:]} == {1}


def test_two_objects_keep_their_ids_and_every_box_is_kept_as_given() -> None:
    frames = [(f, [walker(f, 0, 4), walker(f, 400, -4, "car")]) for f in range(0, 60, 5)]
    out = tracked(frames)
    assert [len(objects) for objects in out] == [2] * len(frames)
    assert out[3][0]["box"] == frames[3][1][0]["box"] and out[3][0]["conf"] == 0.9
    people, cars = {o[0].get("track_id") for o in out[1:]}, {o[1].get("track_id") for o in out[1:]}
    assert len(people) == 1 and len(cars) == 1 and people != cars


def test_a_track_never_changes_class() -> None:
    """Each class is tracked on its own: a car replaced by a person in the same place is a new track."""
    frames = [(f, [walker(f, speed=2, cls="car" if f < 30 else "person")]) for f in range(0, 60, 5)]
    out = tracked(frames)
    ids = {(o[0]["class"], o[0]["track_id"]) for o in out if "track_id" in o[0]}
    assert len({track for _, track in ids}) == 2


def test_a_track_lost_for_longer_than_its_buffer_gets_a_new_id() -> None:
    seen = [(f, [walker(0, speed=0)]) for f in range(0, 30, 5)]
    gone: list[tuple[int, list[dict]]] = [(f, []) for f in range(30, 200, 5)]  # 6.8 s without it
    back = [(f, [walker(0, speed=0)]) for f in range(200, 230, 5)]
    out = tracked(seen + gone + back)
    before, after = out[2][0]["track_id"], out[-1][0]["track_id"]
    assert before != after


def test_the_summary_counts_objects_not_boxes() -> None:
    summary = Summarizer()
    for frame in range(10):
        objects = [{"class": "person", "track_id": 1}, {"class": "person", "track_id": 2}]
        if frame >= 5:
            objects.append({"class": "car", "track_id": 3})
        summary.add(frame * 0.2, objects + [{"class": "person"}])  # an untracked box is not an object
    result = summary.result().to_mongo()["classes"]
    assert result["person"] == {"tracks": 2, "max_at_once": 2, "first_s": 0.0, "last_s": 1.8}
    assert result["car"] == {"tracks": 1, "max_at_once": 1, "first_s": 1.0, "last_s": 1.8}


def test_a_track_counts_once_in_the_class_it_was_seen_as_most() -> None:
    summary = Summarizer()
    for frame, name in enumerate(["car", "truck", "car", "car"]):
        summary.add(frame, [{"class": name, "track_id": 7}])
    assert list(summary.result().classes) == ["car"]


def test_geometry() -> None:
    a, b = (0.0, 0.0), (10.0, 0.0)  # drawn left to right
    assert side(a, b, (5.0, 5.0)) > 0  # below, on screen: the clockwise side
    assert crosses(a, b, (5.0, -1.0), (5.0, 1.0))
    assert not crosses(a, b, (15.0, -1.0), (15.0, 1.0))  # beside the segment, not across it
    assert not crosses(a, b, (5.0, 1.0), (6.0, 2.0))
    square = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    assert inside(square, (5.0, 5.0)) and not inside(square, (15.0, 5.0))


def test_a_line_counts_crossings_by_direction() -> None:
    line = LineZone(name="door", line=[(100.0, 0.0), (100.0, 300.0)])  # top to bottom: moving left is `in`
    counter = Counter(line)
    for frame in range(0, 30, 5):  # track 1 walks right across x=100, track 2 walks left across it (on it at 10)
        walking = {"class": "person", "track_id": 1, "box": [60 + 4 * frame, 0, 80 + 4 * frame, 50]}
        driving = {"class": "car", "track_id": 2, "box": [130 - 4 * frame, 0, 150 - 4 * frame, 50]}
        counter.add(frame, frame / 25, [walking, driving])
    result = counter.result()
    assert result.counts == {"car": {"in": 1, "out": 0}, "person": {"in": 0, "out": 1}}
    assert [(c.track_id, c.direction) for c in result.crossings] == [(2, "in"), (1, "out")] or \
        sorted((c.track_id, c.direction) for c in result.crossings) == [(1, "out"), (2, "in")]  # fmt: skip
    assert all(c.frame > 0 and c.time_s == c.frame / 25 for c in result.crossings)


def test_a_polygon_counts_entries_exits_time_and_occupancy() -> None:
    lot = PolygonZone(name="lot", polygon=[(0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)])
    counter = Counter(lot, duration_s=10)
    positions = [150, 150, 50, 50, 50, 150]  # foot point x: outside, outside, in for 2 s, out
    for second, x in enumerate(positions):
        counter.add(second * 25, float(second), [{"class": "car", "track_id": 4, "box": [x - 5, 40, x + 5, 50]}])
    result = counter.result()
    assert result.counts == {"car": {"entered": 1, "exited": 1, "seconds": 2.0}}
    assert [c.direction for c in result.crossings] == ["entered", "exited"]
    assert [(o.time_s, o.count) for o in result.occupancy or []] == [
        (0.0, {}),
        (1.0, {}),
        (2.0, {"car": 1}),
        (3.0, {"car": 1}),
        (4.0, {"car": 1}),
        (5.0, {}),
    ]


def test_events_kept_are_bounded_but_counts_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("analytics.zones.MAX_CROSSINGS", 3)
    counter = Counter(LineZone(name="l", line=[(50.0, 0.0), (50.0, 100.0)]))
    for frame in range(10):  # back and forth across the line every frame
        x = 40 if frame % 2 else 60
        counter.add(frame, frame, [{"class": "cat", "track_id": 1, "box": [x - 1, 0, x + 1, 10]}])
    result = counter.result()
    assert sum(result.counts["cat"].values()) == 9 and len(result.crossings) == 3 and result.omitted == 6


def test_zones_recounted_from_stored_tracks_match_those_counted_while_tracking() -> None:
    zones: list[Zone] = [LineZone(name="door", line=[(100.0, 0.0), (100.0, 300.0)])]
    analysis = Analysis(JobOptions(zones=zones), fps=25.0, stride=5, total_frames=12)
    stored = [analysis.frame({"frame": f, "objects": [walker(f, 0, 4)]}) for f in range(0, 60, 5)]
    during = analysis.tail()["zones"]
    again = {name: counts.to_mongo() for name, counts in recount(zones, stored, 25.0, 12, 5).items()}
    assert again == during and during["door"]["counts"] == {"person": {"in": 0, "out": 1}}


def test_options_refuse_zones_without_tracking_and_duplicate_names() -> None:
    line = {"name": "a", "line": [[0, 0], [1, 1]]}
    with pytest.raises(ValueError, match="track=true"):
        JobOptions.model_validate({"track": False, "zones": [line]})
    with pytest.raises(ValueError, match="unique"):
        JobOptions.model_validate({"zones": [line, line]})
    with pytest.raises(ValueError):
        JobOptions.model_validate({"zones": [{"name": "b", "line": [[0, 0], [1, 1]], "polygon": [[0, 0]] * 3}]})


PERSON = {"class": "person", "box": [2.0, 2.0, 12.0, 22.0], "conf": 0.6, "track_id": 3}
CAR = {"class": "car", "box": [0.0, 0.0, 4.0, 4.0], "conf": 0.7, "track_id": 4}
FRAMES = [{"frame": 0, "objects": [{"class": "person", "box": [1.0, 2.0, 11.0, 22.0], "conf": 0.5}]},
          {"frame": 5, "objects": [PERSON, CAR]}]  # fmt: skip


def test_mot_lines_are_one_based_tracked_objects() -> None:
    lines = "".join(exports.mot_text(FRAMES)).splitlines()
    assert lines == ["6,3,2.00,2.00,10.00,20.00,0.6000,-1,-1,-1", "6,4,0.00,0.00,4.00,4.00,0.7000,-1,-1,-1"]


def test_coco_is_valid_json_with_images_annotations_and_categories() -> None:
    coco = json.loads("".join(exports.coco_json({"event_id": "j", "width": 640, "height": 480}, lambda: FRAMES)))
    assert [image["id"] for image in coco["images"]] == [1, 6] and coco["images"][0]["width"] == 640
    assert [c["name"] for c in coco["categories"]] == ["person", "car"]
    assert coco["annotations"][1] == {"id": 2, "image_id": 6, "category_id": 1, "bbox": [2.0, 2.0, 10.0, 20.0],
                                      "area": 200.0, "iscrowd": 0, "score": 0.6, "track_id": 3}  # fmt: skip


def test_csv_rows_carry_the_track_id() -> None:
    rows = "".join(exports.csv_text("j", FRAMES)).splitlines()
    assert rows[0] == ",".join(exports.CSV_HEADER) and rows[1].endswith(",") and rows[2].endswith(",3")


def test_boxes_between_sampled_frames_move_along_their_track() -> None:
    before = [{"class": "car", "box": [0, 0, 10, 10], "conf": 0.9, "track_id": 1}, {"class": "cat", "box": [5, 5, 6, 6],
              "conf": 0.3}]  # fmt: skip
    after = [{"class": "car", "box": [10, 0, 20, 10], "conf": 0.8, "track_id": 1}]
    mid = between(before, after, 0.5)
    assert mid[0]["box"] == [5, 0, 15, 10] and mid[1] == before[1]  # the untracked box is held
    assert between(before, None, 0.5) == before and between(before, after, 0.0) == before


def test_a_crowd_is_tracked_in_its_most_confident_boxes_and_every_box_is_kept(monkeypatch) -> None:
    monkeypatch.setattr("analytics.tracking.MAX_TRACKED", 3)
    crowd = [{"class": "person", "box": [50.0 * i, 0.0, 50.0 * i + 40, 80.0], "conf": 0.5 + 0.05 * i} for i in range(6)]
    out = tracked([(f, crowd) for f in range(0, 20, 5)])[-1]
    assert len(out) == 6 and [("track_id" in o) for o in out] == [False, False, False, True, True, True]
