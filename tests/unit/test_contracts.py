import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from events.contracts import (
    FRAME_MAGIC,
    DeadLetter,
    DetectedObject,
    DetectionFile,
    FrameDocument,
    FramePrediction,
    InferenceResult,
    InferenceTask,
    JobEvent,
    JobEventType,
    OutboxDocument,
    OutboxEvent,
    OutboxPayload,
    RunnerPrediction,
    StorageLocation,
)
from events.statuses import OutboxStatus, RunnerStatus

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CAT = DetectedObject(class_name="cat", box=[100, 200, 300, 400], conf=0.87)

MESSAGES = [
    OutboxEvent(event_id="e1", payload=OutboxPayload(bucket="videos", object="input/e1.mp4"), created_at=NOW),
    InferenceTask(event_id="e1", frame=5, image=b"hello", image_width=1, image_height=1, encoding="jpeg"),
    InferenceResult(event_id="e1", frame=5, objects=[CAT]),
    DetectionFile(
        event_id="e1",
        total_frames=1,
        prediction=[FramePrediction(frame=0, objects=[CAT])],
        created_at=NOW,
        completed_at=NOW,
    ),
    DeadLetter(service="inference", error="ValueError: x", topic="t", partition=0, offset=3, key="k", value="{}"),
    JobEvent(event_id="e1", type=JobEventType.ACCEPTED, at=NOW, created_at=NOW, callback_url="https://example.com/h",
             payload=OutboxPayload(bucket="videos", object="input/e1.mp4")),
    JobEvent(event_id="e1", type=JobEventType.PROGRESS, at=NOW, frames_total=50, frames_done=20),
]  # fmt: skip


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_message_round_trips_through_kafka_bytes(message) -> None:
    assert type(message).from_bytes(message.to_bytes()) == message


def test_detected_object_uses_the_spec_field_name_class() -> None:
    data = json.loads(InferenceResult(event_id="e", frame=0, objects=[CAT]).to_bytes())
    assert data == {
        "event_id": "e",
        "frame": 0,
        "objects": [{"class": "cat", "box": [100, 200, 300, 400], "conf": 0.87}],
    }


def test_outbox_document_matches_the_spec_shape() -> None:
    doc = OutboxDocument(id="v1", payload=OutboxPayload(bucket="videos", object="input/v1.mp4"), created_at=NOW)
    spec = {
        "_id": "v1",
        "status": "new",
        "payload": {"bucket": "videos", "object": "input/v1.mp4", "media_type": "video"},
        "created_at": NOW,
    }
    # the seed's fields, plus the read model's progress (none yet)
    assert doc.to_mongo() == {**spec, "frames_done": 0, "progress": 0.0, "version": 0}
    assert OutboxDocument.model_validate(doc.to_mongo()) == doc


def test_runner_prediction_starts_as_the_spec_says_and_stays_small() -> None:
    job = RunnerPrediction(id="v1", bucket="videos")
    spec = {"_id": "v1", "bucket": "videos", "received_frames": 0, "status": "processing"}
    assert job.to_mongo().items() >= spec.items()
    assert "frame_results" not in job.to_mongo()  # frames are documents of their own: the job stays small
    job = RunnerPrediction(id="v1", bucket="b", total_frames=3, received_frames=3)
    assert job.is_complete()
    assert not RunnerPrediction(id="v", bucket="b", received_frames=3).is_complete()  # total unknown yet


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"event_id": "e", "frame": -1, "objects": []}',
        b'{"event_id": "e", "frame": 1, "objects": [{"class": "cat", "box": [1, 2, 3], "conf": 0.5}]}',
        b'{"event_id": "e", "frame": 1, "objects": [{"class": "cat", "box": [1, 2, 3, 4], "conf": 1.5}]}',
        b'{"frame": 1, "objects": []}',
    ],
)
def test_malformed_results_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        InferenceResult.from_bytes(raw)


def test_statuses_are_the_spec_strings() -> None:
    assert [s.value for s in OutboxStatus] == ["new", "sent", "ready", "failed"]
    assert [s.value for s in RunnerStatus] == ["processing", "predictable", "ready", "failed"]
    assert StorageLocation(bucket="b", object="o").to_mongo() == {"bucket": "b", "object": "o"}


def test_frame_documents_of_a_job_sort_by_frame_number_within_one_id_range() -> None:
    keys = [FrameDocument.key("job", frame) for frame in (10, 5, 100, 0)]
    assert sorted(keys) == [FrameDocument.key("job", f) for f in (0, 5, 10, 100)]
    bounds = FrameDocument.range_of("job")["_id"]
    assert all(bounds["$gte"] <= key < bounds["$lt"] for key in keys)
    assert not bounds["$gte"] <= FrameDocument.key("job2", 0) < bounds["$lt"]
    result = InferenceResult(event_id="job", frame=5, objects=[], error="bad frame")
    assert FrameDocument.of(result).to_mongo() == {"_id": "job:0000000005", "job": "job", "frame": 5,
                                                   "objects": [], "error": "bad frame"}  # fmt: skip


def test_every_field_a_service_writes_in_an_update_is_declared_by_a_document_model() -> None:
    """A static look at every `$set`, `$inc`, `$max`, `$unset` written as a literal in the services; the
    end-to-end test checks what they actually stored (test_every_document_the_services_wrote_is_...)."""
    import ast
    from pathlib import Path

    from events.contracts import documents

    declared = {field.alias or name for model in documents().values() for name, field in model.model_fields.items()}
    operators = {"$set", "$inc", "$max", "$min", "$unset", "$setOnInsert"}
    root = Path(__file__).resolve().parent.parent.parent
    written: dict[str, str] = {}
    for folder in ("api", "events", "relays", "runner"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Dict):
                    continue
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in operators and isinstance(value, ast.Dict):
                        for field in value.keys:
                            if isinstance(field, ast.Constant) and isinstance(field.value, str):
                                written[field.value.split(".")[0]] = f"{path.relative_to(root)}:{field.lineno}"
                            elif isinstance(field, ast.JoinedStr) and isinstance(field.values[0], ast.Constant):
                                written[str(field.values[0].value).split(".")[0]] = f"{path.relative_to(root)}"
    assert written, "the scan found the services' updates"
    assert {name: where for name, where in written.items() if name not in declared} == {}


def test_a_frame_message_is_a_small_json_header_and_the_frames_bytes_as_they_are() -> None:
    pixels = bytes(range(256)) * 9  # 48x32 I420: 2304 bytes, every byte value
    task = InferenceTask(event_id="e1", frame=5, image=pixels, image_width=48, image_height=32, width=1920,
                         height=1280, model="a" * 64)  # fmt: skip
    message = task.to_bytes()
    assert message.startswith(FRAME_MAGIC) and message.endswith(pixels)  # no base64, no escaping
    assert len(message) - len(pixels) < 200
    back = InferenceTask.from_bytes(message)
    assert back.image == pixels and back.encoding == "i420" and (back.width, back.height) == (1920, 1280)
    assert back.model_dump() == task.model_dump()


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b'{"event_id": "e1", "frame": 0, "image": "aGk="}', "not a frame message"),  # the old JSON shape
        (FRAME_MAGIC + b"\x00\x00", "not a frame message"),
        (FRAME_MAGIC + (10**6).to_bytes(4, "big") + b"{}", "does not fit the message"),
        (FRAME_MAGIC + (5).to_bytes(4, "big") + b"{nope", "Invalid JSON"),
        (FRAME_MAGIC + (2).to_bytes(4, "big") + b"{}", "Field required"),
    ],
)
def test_a_message_that_is_not_a_frame_message_is_refused_with_why(message: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        InferenceTask.from_bytes(message)
