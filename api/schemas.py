"""What the API shows: request and response bodies (not the same thing as the event contracts)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.contracts import FramePrediction, ModelRef, ModelSource, Zone, ZoneCounts

JOB = "6f1c2a9e-3b7d-4c41-9a55-0d2e8b7f4c10"
PROGRESS = {"frames_total": 50, "frames_done": 20, "progress": 0.4, "eta_seconds": 3.1}


def example(**values: Any) -> ConfigDict:
    """The model's example in the OpenAPI document."""
    return ConfigDict(json_schema_extra={"examples": [values]})


class ServiceDown(BaseModel):
    name: str = Field(description="the service (`inference-1`: the local stack's second inference worker)")
    state: Literal["restarting", "failing", "unknown"] = Field(
        description="restarting: exited, started again after a back-off; failing: exited 3 times in a row soon "
        "after starting; unknown: the stack's supervisor is not reporting"
    )
    restarts: int = Field(default=0, description="restarts in a row")
    reason: str | None = Field(default=None, description="why it last exited: its exit and last error")


class Health(BaseModel):
    model_config = example(status="ok", service="api", down=[])

    status: Literal["ok", "degraded"] = Field(default="ok", description="degraded: a service of the stack is down")
    service: str = "api"
    down: list[ServiceDown] = Field(
        default_factory=list, description="the local stack's services that are not running (from its supervisor)"
    )


class Accepted(BaseModel):
    model_config = example(status="ok", event_id=JOB)

    status: Literal["ok"] = "ok"
    event_id: str


class VideoRequest(BaseModel):
    """Process a video that is already in storage."""

    model_config = example(
        bucket="videos", object="uploads/street.mp4", callback_url="https://example.com/hooks/vdetect"
    )

    bucket: str | None = Field(default=None, description="defaults to DEFAULT_BUCKET")
    object: str = Field(min_length=1, max_length=1024, description="the video's key in the bucket")
    callback_url: str | None = Field(default=None, max_length=2048, description="POSTed to when the job ends")
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="a model's name (GET /api/models), or DEFAULT_MODEL",
    )
    track: bool | None = Field(default=None, description="track objects across frames (default true)")
    zones: list[Zone] | None = Field(default=None, max_length=32, description="lines and polygons to count")
    render: bool | None = Field(default=None, description="make the annotated video (default false)")


BUILTIN_SHA256 = "ec8fb547d099aefc60958e5d28d66d95bbd1efeac26b63ec0d04d31831e3f245"


class ModelEntry(BaseModel):
    model_config = example(name="parts", sha256=BUILTIN_SHA256, classes=["bolt", "nut"], imgsz=640, stride=32,
                           source={"format": "pt", "file": "best.pt", "sha256": BUILTIN_SHA256,
                                   "ultralytics": "8.4.190"}, default=False, layout="end2end",
                           created_at="2026-12-02T10:00:00Z")  # fmt: skip

    name: str
    sha256: str = Field(description="the ONNX file's content hash: a job keeps the file it was accepted with")
    classes: list[str]
    imgsz: int = Field(description="the long side frames are letterboxed to")
    stride: int | None = Field(default=None, description="a model with dynamic height and width: padded to it")
    layout: Literal["anchors", "end2end"] = Field(
        description="anchors: [batch, 4 + classes, anchors], NMS in the worker; end2end: [batch, max_det, 6]"
    )
    source: ModelSource
    default: bool = Field(description="jobs that name no model run this one")
    created_at: datetime


class ModelList(BaseModel):
    model_config = example(models=[{"name": "yolov10n", "sha256": BUILTIN_SHA256, "classes": ["person", "bicycle"],
                                    "imgsz": 640, "layout": "anchors", "default": True,
                                    "source": {"format": "builtin", "file": "yolov10n.onnx", "sha256": BUILTIN_SHA256},
                                    "created_at": "2026-12-02T10:00:00Z"}])  # fmt: skip

    models: list[ModelEntry]


class JobProgress(BaseModel):
    frames_total: int | None = Field(description="frames to detect; estimated until the video is read, null if unknown")
    frames_done: int = Field(description="frames detected so far (a frame the detector could not handle counts)")
    progress: float = Field(ge=0, le=1, description="never goes back; 1.0 when ready")
    eta_seconds: float | None = Field(description="seconds left at the rate so far, null when unknown")


FILE_NAME = Field(default=None, description="the uploaded file's name (sanitised), or the object key's last part")


class Operation(JobProgress):
    video_id: str
    file_name: str | None = FILE_NAME
    status_code: str
    status_description: str
    processing_time_seconds: float
    processing_time_formatted: str
    error: str | None = None


class Operations(BaseModel):
    model_config = example(
        operations=[{"video_id": JOB, "status_code": "sent", "status_description": "processing",
                     "processing_time_seconds": 4.2, "processing_time_formatted": "4s", "error": None, **PROGRESS}],
        total=1,
        next="MjAyNi0xMS0yOFQyMzowMDowMC4wMDBafDZmMWMyYTll",
    )  # fmt: skip

    operations: list[Operation]
    total: int = Field(description="how many operations this answer lists")
    next: str | None = Field(default=None, description="cursor of the next page (pass it as `after`), or null")


class ResultReady(BaseModel):
    model_config = example(
        status="ready", event_id=JOB, fps=25.0, processing_time_seconds=9.8, processing_time_formatted="9s",
        prediction=[{"frame": 0, "objects": [{"class": "person", "box": [412.0, 96.5, 470.2, 270.0], "conf": 0.91}]},
                    {"frame": 5, "objects": []}],
    )  # fmt: skip

    status: Literal["ready"] = "ready"
    event_id: str
    fps: float | None = Field(default=None, description="the video's frame rate: frame N is at N / fps seconds")
    model: ModelRef | None = Field(default=None, description="the model that produced the detections")
    prediction: list[FramePrediction]
    processing_time_seconds: float
    processing_time_formatted: str


class ResultPending(JobProgress):
    model_config = example(status="sent", event_id=JOB, status_description="processing", processing_time_seconds=4.2,
                           processing_time_formatted="4s", error=None, **PROGRESS)  # fmt: skip

    status: str
    event_id: str
    file_name: str | None = FILE_NAME
    status_description: str
    processing_time_seconds: float
    processing_time_formatted: str
    error: str | None = None


class Cleaned(BaseModel):
    model_config = example(status="ok", jobs_deleted=1, objects_deleted=2)

    status: Literal["ok"] = "ok"
    jobs_deleted: int
    objects_deleted: int


class Problem(BaseModel):
    """Every error answer: a message saying what was wrong."""

    model_config = example(detail="the uploaded file is not a video container")
    detail: str | list[dict[str, object]]


EVENT_STREAM_EXAMPLE = (
    'event: status\ndata: {"status": "sent", "event_id": "' + JOB + '", "frames_total": 50, "frames_done": 20, ...}\n\n'
)


class ZonesRequest(BaseModel):
    model_config = example(zones=[{"name": "door", "line": [[100, 400], [500, 400]]},
                                  {"name": "lot", "polygon": [[0, 0], [300, 0], [300, 200], [0, 200]]}])  # fmt: skip

    zones: list[Zone] = Field(min_length=1, max_length=32, description="lines and polygons, in the video's pixels")


class ZonesAnswer(BaseModel):
    model_config = example(event_id=JOB, zones={"door": {
        "kind": "line", "points": [[100, 400], [500, 400]], "counts": {"person": {"in": 1, "out": 0}},
        "crossings": [{"track_id": 3, "class": "person", "frame": 120, "time_s": 4.8, "direction": "in"}],
        "omitted": 0}})  # fmt: skip

    event_id: str
    zones: dict[str, ZoneCounts] = Field(description="per zone: its counts per class and each crossing")


class RenderState(BaseModel):
    model_config = example(event_id=JOB, status="ready", url=f"/api/jobs/{JOB}/annotated.mp4")

    event_id: str
    status: Literal["none", "rendering", "ready", "failed"] = Field(
        description="none: never asked for; rendering: asked for, not made yet; failed: see `error`"
    )
    error: str | None = None
    url: str | None = Field(default=None, description="where the annotated video is served, once ready")
