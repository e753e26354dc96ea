"""Pydantic models of every Kafka message and every MongoDB document of the pipeline.

Kafka messages are JSON (`to_bytes` / `Model.model_validate_json`); documents go to MongoDB with
`to_mongo()` (the `_id` alias kept) and come back with `Model.model_validate(doc)`.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from events import topics
from events.statuses import OutboxStatus, RunnerStatus

# MongoDB collections: main_db holds the outbox, runner_db the runner's jobs (one small document each)
# and their frame results (one document per frame); each relay keeps its resume token beside the
# collection it watches.
OUTBOX = "outbox"
PREDICTIONS = "runner_predictions"
FRAMES = "runner_frames"
CHECKPOINTS = "relay_checkpoints"
SESSIONS = "sessions"  # the web page's sign-ins (api.sessions)
MODELS = "models"  # the detection models the workers serve (api.registry), their files in object storage


def documents() -> dict[tuple[str, str], type["Contract"]]:
    """(Database role, collection) -> the model of its documents: `main` is MAIN_DB, `runner` RUNNER_DB
    (each relay's checkpoints live beside what it watches). Every field any service writes is in its model."""
    return {("main", OUTBOX): OutboxDocument, ("main", SESSIONS): SessionDocument, ("main", CHECKPOINTS): Checkpoint,
            ("main", MODELS): ModelDocument, ("runner", PREDICTIONS): RunnerPrediction,
            ("runner", FRAMES): FrameDocument, ("runner", CHECKPOINTS): Checkpoint}  # fmt: skip


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        return cls.model_validate_json(data)

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class StorageLocation(Contract):
    bucket: str
    object: str


class ModelRef(Contract):
    """The model a job runs: its name when the job was accepted and the content hash of its file (the job
    keeps it even if the name is later pointed at another file)."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


Coordinate = Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
Point = tuple[Coordinate, Coordinate]
MAX_ZONES = 32
MAX_POLYGON_POINTS = 100


class LineZone(Contract):
    """A line, its crossings counted in and out, in the video's pixels. `in` is a crossing towards the side
    the line's direction (first point to second) turns to when turned 90 degrees clockwise on the screen:
    a line drawn left to right counts moving down as `in`, one drawn top to bottom counts moving left."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[Literal["line"]] = "line"

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")
    line: list[Point] = Field(min_length=2, max_length=2)

    @property
    def points(self) -> list[Point]:
        return self.line


class PolygonZone(Contract):
    """A polygon: entries, exits, time inside and occupancy, in the video's pixels."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[Literal["polygon"]] = "polygon"

    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")
    polygon: list[Point] = Field(min_length=3, max_length=MAX_POLYGON_POINTS)

    @property
    def points(self) -> list[Point]:
        return self.polygon


def _shape(value: Any) -> str:
    """Which kind of zone a value is: a line if it has one, else a polygon (each then says what is wrong)."""
    has_line = "line" in value if isinstance(value, dict) else getattr(value, "kind", None) == "line"
    return "line" if has_line else "polygon"


Zone = Annotated[Annotated[LineZone, Tag("line")] | Annotated[PolygonZone, Tag("polygon")], Discriminator(_shape)]


def zone_problem(zones: list[Zone], tracked: bool = True) -> str | None:
    """What is wrong with a job's zones as a whole (each zone is valid on its own), or None."""
    names = [zone.name for zone in zones]
    if len(set(names)) < len(names):
        return "zone names must be unique"
    if zones and not tracked:
        return "zones count tracked objects: they need track=true"
    return None


class JobOptions(Contract):
    """What a job does beyond detecting. Tracking is on by default: counting objects rather than boxes is
    what detections are mostly used for, and it costs a fraction of a millisecond per sampled frame."""

    track: bool = Field(default=True, description="give every tracked object a `track_id`, and a `summary`")
    zones: list[Zone] = Field(default_factory=list, max_length=MAX_ZONES, description="lines and polygons to count")
    render: bool = Field(default=False, description="make the annotated video (`annotated/{id}.mp4`)")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if problem := zone_problem(self.zones, self.track):
            raise ValueError(problem)
        return self


class OutboxPayload(StorageLocation):
    media_type: Literal["video"] = "video"
    model: ModelRef | None = Field(default=None, description="None: the workers' own default model")
    options: JobOptions | None = Field(default=None, description="None: the defaults (tracking on, no zones)")


class ModelSource(Contract):
    """Where an imported model came from."""

    format: Literal["pt", "onnx", "builtin"]
    file: str = Field(max_length=255, description="the imported file's name")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the imported file's (the checkpoint's, for a .pt)")
    ultralytics: str | None = Field(default=None, max_length=40, description="the version that exported it")


class ModelDocument(Contract):
    """`main_db.models`: one per model name, pointing at a file in object storage by its content hash."""

    id: str = Field(alias="_id", description="the model's name")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the ONNX file's: it lies at models/{sha256}.onnx")
    bucket: str
    classes: list[str]
    imgsz: int
    stride: int | None = Field(default=None, description="for dynamic height and width: frames padded to it")
    layout: Literal["anchors", "end2end"]
    bytes: int
    source: ModelSource
    created_at: datetime = Field(default_factory=utcnow)

    def ref(self) -> ModelRef:
        return ModelRef(name=self.id, sha256=self.sha256)


class JobState(Contract):
    """A job as clients see it: the read model in `main_db.outbox`, written by the API when the job is
    accepted and moved on only by the projector, through `events.jobstate.apply`, from `job_events`."""

    id: str = Field(alias="_id")
    payload: OutboxPayload
    created_at: datetime = Field(default_factory=utcnow)
    callback_url: str | None = None
    file_name: str | None = Field(default=None, description="the uploaded file's name (sanitised), or the key's")
    status: OutboxStatus = OutboxStatus.NEW
    frames_total: int | None = None
    frames_done: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = Field(default=None, description="time of the latest event applied")
    version: int = Field(default=0, description="how many events changed the job: orders live updates")

    @classmethod
    def accepted(cls, event: "JobEvent") -> Self:
        assert event.payload is not None and event.created_at is not None, "an accepted event carries the job"
        return cls(id=event.event_id, payload=event.payload, created_at=event.created_at,
                   callback_url=event.callback_url, file_name=event.file_name)  # fmt: skip


class OutboxDocument(JobState):
    """`main_db.outbox`: one per job. The API inserts it; the outbox relay keeps its own bookkeeping
    in it (`relayed_at`, `sent_to`); the projector owns the job's state (`JobState`)."""

    relayed_at: datetime | None = None
    webhook: str | None = Field(default=None, description="`pending` until the webhook relay is done with it")
    sent_to: dict[str, int] | None = Field(default=None, description="partition -> offset of the outbox event")
    client: str | None = Field(default=None, description="the submitting client's address (jobs waiting per client)")
    redeliveries: int | None = Field(default=None, description="times the outbox relay sent the event again")
    webhook_attempts: int | None = Field(default=None, description="webhook deliveries attempted so far")
    webhook_last: str | None = Field(default=None, description="the last attempt's outcome (`HTTP 200`, a reason)")
    webhook_last_at: datetime | None = None
    render_requested_at: datetime | None = Field(default=None, description="the annotated video was last asked for")
    render_pending: bool | None = Field(default=None, description="asked for; the outbox relay has not published it")


class OutboxEvent(Contract):
    """Topic `outbox_events`, keyed by `event_id`: a video to process."""

    TOPIC: ClassVar[str] = topics.OUTBOX_EVENTS

    event_id: str
    payload: OutboxPayload
    created_at: datetime


class JobEventType(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    STARTED = "started"
    PROGRESS = "progress"
    READY = "ready"
    FAILED = "failed"
    DELETED = "deleted"
    RENDER = "render"  # the annotated video was asked for, for a finished job (a job's state does not change)


class JobEvent(Contract):
    """Topic `job_events`, keyed by `event_id`: one change of a job, published by the relay that saw it
    in a change stream (the outbox relay: accepted, sent, deleted; the S3 relay: started, progress,
    ready, failed). The API's projector folds them into the read model (`events.jobstate`)."""

    TOPIC: ClassVar[str] = topics.JOB_EVENTS

    event_id: str
    type: JobEventType
    at: datetime = Field(default_factory=utcnow, description="when the change happened")
    frames_total: int | None = Field(default=None, ge=0, description="exact, or estimated until the video is read")
    frames_done: int | None = Field(default=None, ge=0)
    error: str | None = None
    render: bool | None = Field(default=None, description="ready: the job asked for its annotated video")
    video: StorageLocation | None = Field(default=None, description="ready with render, and render: the job's video")
    # accepted only: the job itself, so that a replay of the topic rebuilds the read model
    payload: OutboxPayload | None = None
    created_at: datetime | None = None
    callback_url: str | None = None
    file_name: str | None = None


FRAME_MAGIC = b"VDF1"  # the first bytes of every `inference_tasks` message (version 1 of the framing)
FRAME_HEADER_MAX = 64 * 1024
# The largest message a producer sends and a topic takes (events.clients); a frame's bytes stay 1 MiB under it.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class InferenceTask(Contract):
    """Topic `inference_tasks`, keyed by `event_id`: one sampled frame, scaled to the model's input.

    A binary message (`to_bytes`): FRAME_MAGIC, the length of the JSON header (4 bytes, big-endian), the
    header (every field but `image`), then the image's bytes as they are: no base64, no JSON escaping."""

    event_id: str
    frame: int = Field(ge=0)
    encoding: Literal["i420", "jpeg"] = Field(
        default="i420", description="i420: the decoder's YUV 4:2:0 samples, Y then U then V planes; jpeg: a JPEG file"
    )
    image_width: int = Field(gt=0, description="the image's size as sent (i420: even numbers)")
    image_height: int = Field(gt=0)
    image: bytes = Field(default=b"", exclude=True, repr=False)
    stored: bool | None = Field(
        default=None, description="true: the image is in the frame store (FRAME_STORE_DIR), not in the message"
    )
    width: int | None = Field(default=None, gt=0, description="the original frame's width: boxes come back in it")
    height: int | None = Field(default=None, gt=0, description="the original frame's height")
    model: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="the sha256 of the model to run (models/{sha256}.onnx); None: the default",
    )

    def to_bytes(self) -> bytes:
        header = super().to_bytes()
        return FRAME_MAGIC + len(header).to_bytes(4, "big") + header + self.image

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """ValueError (pydantic's ValidationError is one) for a message that is not a frame message."""
        if not data.startswith(FRAME_MAGIC) or len(data) < len(FRAME_MAGIC) + 4:
            raise ValueError("not a frame message (it does not start with the frame framing)")
        start = len(FRAME_MAGIC) + 4
        length = int.from_bytes(data[len(FRAME_MAGIC) : start], "big")
        if length > FRAME_HEADER_MAX or start + length > len(data):
            raise ValueError(f"the frame message's header length {length} does not fit the message")
        task = cls.model_validate_json(data[start : start + length])
        task.image = data[start + length :]
        return task


Box = Annotated[list[float], Field(min_length=4, max_length=4)]


class DetectedObject(Contract):
    class_name: str = Field(alias="class")
    box: Box = Field(description="x1, y1, x2, y2 in pixels of the original frame")
    conf: float = Field(ge=0, le=1)
    track_id: int | None = Field(default=None, ge=1, description="the same object across frames (with tracking)")


class InferenceResult(Contract):
    """Topic `inference_results`, keyed by `event_id`: the detections of one frame."""

    TOPIC: ClassVar[str] = topics.INFERENCE_RESULTS

    event_id: str
    frame: int = Field(ge=0)
    objects: list[DetectedObject]
    error: str | None = Field(default=None, description="why the detector could not handle this frame")


class FramePrediction(Contract):
    frame: int
    objects: list[DetectedObject]
    error: str | None = None


class FrameDocument(Contract):
    """`runner_db.runner_frames`: the result of one frame of one job, written once (first write wins).

    The `_id` is `{job}:{frame, 10 digits}`, so one job's frames are one `_id` range, in frame order:
    no document grows with the video, and the result is assembled by a sorted range scan."""

    id: str = Field(alias="_id")
    job: str
    frame: int
    objects: list[DetectedObject]
    error: str | None = None

    @staticmethod
    def key(job: str, frame: int) -> str:
        return f"{job}:{frame:010d}"

    @staticmethod
    def range_of(job: str) -> dict[str, Any]:
        """The `_id` filter of every frame of `job` (':' sorts just before ';')."""
        return {"_id": {"$gte": f"{job}:", "$lt": f"{job};"}}

    @classmethod
    def of(cls, result: InferenceResult) -> Self:
        return cls(
            id=cls.key(result.event_id, result.frame),
            job=result.event_id,
            frame=result.frame,
            objects=result.objects,
            error=result.error,
        )


class RunnerPrediction(Contract):
    """`runner_db.runner_predictions`: the runner's bookkeeping of one job, small and of fixed size.

    `total_frames` is None while frames are still being extracted (frames are published as the video
    is read). The frames' results are documents of their own (`FrameDocument`); `received_frames`
    counts them. `tasks` holds, per partition of `inference_tasks`, the offset of the last frame
    message sent for the job: while the inference workers have not consumed past it, the job's
    frames are still queued, and the job is waiting, not stalled."""

    id: str = Field(alias="_id")
    bucket: str
    object: str | None = Field(default=None, description="the video's key, to read it again for a resend")
    model: ModelRef | None = Field(default=None, description="the job's model; None: the workers' default")
    options: JobOptions | None = Field(default=None, description="tracking, zones, rendering; None: the defaults")
    total_frames: int | None = None
    frames_expected: int | None = Field(default=None, description="estimated from the container, for progress")
    fps: float | None = Field(default=None, description="the video's frame rate, from the container")
    stride: int | None = Field(default=None, description="every how many frames one was sampled")
    width: int | None = Field(default=None, description="the video's width in pixels, as displayed")
    height: int | None = None
    received_frames: int = 0
    status: RunnerStatus = RunnerStatus.PROCESSING
    tasks: dict[str, int] = Field(default_factory=dict, description="partition -> offset of the job's last task")
    created_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = Field(default=None, description="when every frame's result was stored")
    ready_at: datetime | None = None
    output_s3: StorageLocation | None = None
    error: str | None = None
    export_error: str | None = Field(default=None, description="why storage refused the job's outcome")
    failed_at: datetime | None = None
    updated_at: datetime | None = Field(default=None, description="last progress: for the stall watchdog")
    resends: int = 0
    outcome_sent_to: dict[str, int] | None = Field(
        default=None, description="partition -> offset of the job's outcome event on job_events, until it is read"
    )
    outcome_sent_at: datetime | None = Field(default=None, description="when the outcome event was published")

    def is_complete(self) -> bool:
        return self.total_frames is not None and self.received_frames >= self.total_frames


class Checkpoint(Contract):
    """`relay_checkpoints` (beside the collection a relay watches): the relay's latest resume token."""

    id: str = Field(alias="_id", description="the relay's name")
    token: dict[str, Any]
    updated_at: datetime


class SessionDocument(Contract):
    """`main_db.sessions`: one sign-in of the web page (`api.sessions`), removed after `expires_at`."""

    id: str = Field(alias="_id", description="the SHA-256 of the session's token (the token is never stored)")
    created_at: datetime
    expires_at: datetime
    client: str


class DetectionHeader(Contract):
    """What `detection/{event_id}.json` holds before its `prediction` list."""

    event_id: str
    total_frames: int
    fps: float | None = Field(default=None, description="the video's frame rate: frame N is at N / fps seconds")
    model: ModelRef | None = Field(default=None, description="the model that produced the detections")
    stride: int | None = Field(default=None, description="every how many frames one was sampled")
    width: int | None = None
    height: int | None = None
    tracked: bool | None = Field(default=None, description="objects carry `track_id`s; the file ends with a summary")
    created_at: datetime
    completed_at: datetime


class ClassSummary(Contract):
    tracks: int = Field(description="distinct tracked objects of the class")
    max_at_once: int = Field(description="the most tracked at once in one sampled frame")
    first_s: float = Field(description="when the first was first seen, seconds into the video")
    last_s: float = Field(description="when the last was last seen")


class Summary(Contract):
    classes: dict[str, ClassSummary]


class Crossing(Contract):
    track_id: int
    class_name: str = Field(alias="class")
    frame: int
    time_s: float
    direction: Literal["in", "out", "entered", "exited"]


class Occupancy(Contract):
    time_s: float = Field(description="the start of the interval")
    count: dict[str, int] = Field(description="per class, the most tracked objects inside during the interval")


class ZoneCounts(Contract):
    """One zone's counts: a line's `{"in", "out"}` per class, a polygon's `{"entered", "exited", "seconds"}`
    (seconds: the time tracked objects of the class spent inside, added up); each event, in time order
    (at most MAX_CROSSINGS, `omitted` says how many more); a polygon's occupancy over time."""

    kind: Literal["line", "polygon"]
    points: list[Point]
    counts: dict[str, dict[str, int | float]]
    crossings: list[Crossing]
    omitted: int = 0
    occupancy: list[Occupancy] | None = None


class DetectionFile(DetectionHeader):
    """`detection/{event_id}.json` in object storage: the finished result, written by the S3 relay.

    It is written by streaming the job's frame documents (`events.detection_file`): a small header,
    `prediction`, then what was counted over the frames of a tracked job (`summary`, `zones`), so neither
    writer nor reader ever holds a whole result; this model describes its shape."""

    prediction: list[FramePrediction]
    # after the prediction: made while it was written (tracked jobs only)
    summary: Summary | None = None
    zones: dict[str, ZoneCounts] | None = None


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


def model_key(sha256: str) -> str:
    return f"models/{sha256}.onnx"


def annotated_key(event_id: str) -> str:
    return f"annotated/{event_id}.mp4"


def annotated_failure_key(event_id: str) -> str:
    return f"annotated/{event_id}.failed.json"


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
