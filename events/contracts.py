"""Pydantic models of every Kafka message and every MongoDB document of the pipeline.

Kafka messages are JSON (`to_bytes` / `Model.model_validate_json`); documents go to MongoDB with
`to_mongo()` (the `_id` alias kept) and come back with `Model.model_validate(doc)`.
"""

from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from events import topics
from events.statuses import OutboxStatus, RunnerStatus

# MongoDB collections: main_db holds the outbox, runner_db the runner's predictions; each relay keeps
# its resume token beside the collection it watches.
OUTBOX = "outbox"
PREDICTIONS = "runner_predictions"
CHECKPOINTS = "relay_checkpoints"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.model_validate_json(data)

    def to_mongo(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True)


class StorageLocation(Contract):
    bucket: str
    object: str


class OutboxPayload(StorageLocation):
    media_type: Literal["video"] = "video"


class OutboxDocument(Contract):
    """`main_db.outbox`: one per job, written by the API, moved on by the relays."""

    id: str = Field(alias="_id")
    status: OutboxStatus = OutboxStatus.NEW
    payload: OutboxPayload
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    error: str | None = None


class OutboxEvent(Contract):
    """Topic `outbox_events`, keyed by `event_id`: a video to process."""

    TOPIC: ClassVar[str] = topics.OUTBOX_EVENTS

    event_id: str
    payload: OutboxPayload
    created_at: datetime


class InferenceTask(Contract):
    """Topic `inference_tasks`, keyed by `event_id`: one sampled, preprocessed frame."""

    event_id: str
    frame: int = Field(ge=0)
    image: str = Field(description="base64 of the JPEG-encoded frame")


Box = Annotated[list[float], Field(min_length=4, max_length=4)]


class DetectedObject(Contract):
    class_name: str = Field(alias="class")
    box: Box = Field(description="x1, y1, x2, y2 in pixels of the original frame")
    conf: float = Field(ge=0, le=1)


class InferenceResult(Contract):
    """Topic `inference_results`, keyed by `event_id`: the detections of one frame."""

    TOPIC: ClassVar[str] = topics.INFERENCE_RESULTS

    event_id: str
    frame: int = Field(ge=0)
    objects: list[DetectedObject]


class FramePrediction(Contract):
    frame: int
    objects: list[DetectedObject]


class RunnerPrediction(Contract):
    """`runner_db.runner_predictions`: the runner's bookkeeping of one job.

    `total_frames` is None while frames are still being extracted (frames are published as the video
    is read); `frame_results` maps the frame number (as a string: a MongoDB field name) to its objects.
    """

    id: str = Field(alias="_id")
    bucket: str
    object: str | None = Field(default=None, description="the video's key, to read it again for a resend")
    total_frames: int | None = None
    received_frames: int = 0
    frame_results: dict[str, list[DetectedObject]] = Field(default_factory=dict)
    status: RunnerStatus = RunnerStatus.PROCESSING
    prediction: list[FramePrediction] | None = None
    created_at: datetime = Field(default_factory=utcnow)
    ready_at: datetime | None = None
    output_s3: StorageLocation | None = None
    error: str | None = None
    failed_at: datetime | None = None
    updated_at: datetime | None = Field(default=None, description="last progress: for the stall watchdog")
    resends: int = 0

    def is_complete(self) -> bool:
        return self.total_frames is not None and self.received_frames >= self.total_frames

    def sorted_prediction(self) -> list[FramePrediction]:
        return [
            FramePrediction(frame=int(frame), objects=objects)
            for frame, objects in sorted(self.frame_results.items(), key=lambda item: int(item[0]))
        ]


class DetectionFile(Contract):
    """`detection/{event_id}.json` in object storage: the finished result, written by the S3 relay."""

    event_id: str
    total_frames: int
    prediction: list[FramePrediction]
    created_at: datetime
    completed_at: datetime


class FailureFile(Contract):
    """`failed/{event_id}.json` in object storage: why a job failed, written by the S3 relay.

    A failure is a job's outcome like a detection file, so it reaches the API the same way (the API
    never reads `runner_db`, and `runner_db` may live on another server than `main_db`)."""

    event_id: str
    error: str
    failed_at: datetime


def failure_key(event_id: str) -> str:
    return f"failed/{event_id}.json"


def detection_key(event_id: str) -> str:
    return f"detection/{event_id}.json"


def input_key(event_id: str) -> str:
    return f"input/{event_id}.mp4"


class DeadLetter(Contract):
    """Topic `dead_letters`: a message a consumer could not handle, kept with why and where from."""

    service: str
    error: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="the original value, decoded as UTF-8 with replacement")
    failed_at: datetime = Field(default_factory=utcnow)
