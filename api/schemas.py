"""What the API shows: request and response bodies (not the same thing as the event contracts)."""

from typing import Literal

from pydantic import BaseModel, Field

from events.contracts import FramePrediction


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str = "api"


class Accepted(BaseModel):
    status: Literal["ok"] = "ok"
    event_id: str


class VideoRequest(BaseModel):
    """Process a video that is already in storage."""

    bucket: str | None = Field(default=None, description="defaults to DEFAULT_BUCKET")
    object: str = Field(min_length=1, max_length=1024, description="the video's key in the bucket")
    callback_url: str | None = Field(default=None, max_length=2048, description="POSTed to when the job ends")


class JobProgress(BaseModel):
    frames_total: int | None = Field(description="frames to detect; estimated until the video is read, null if unknown")
    frames_done: int = Field(description="frames detected so far (a frame the detector could not handle counts)")
    progress: float = Field(ge=0, le=1, description="never goes back; 1.0 when ready")
    eta_seconds: float | None = Field(description="seconds left at the rate so far, null when unknown")


class Operation(JobProgress):
    video_id: str
    status_code: str
    status_description: str
    processing_time_seconds: float
    processing_time_formatted: str
    error: str | None = None


class Operations(BaseModel):
    operations: list[Operation]
    total: int = Field(description="how many operations this answer lists")
    next: str | None = Field(default=None, description="cursor of the next page (pass it as `after`), or null")


class ResultReady(BaseModel):
    status: Literal["ready"] = "ready"
    event_id: str
    fps: float | None = Field(default=None, description="the video's frame rate: frame N is at N / fps seconds")
    prediction: list[FramePrediction]
    processing_time_seconds: float
    processing_time_formatted: str


class ResultPending(JobProgress):
    status: str
    event_id: str
    status_description: str
    processing_time_seconds: float
    processing_time_formatted: str
    error: str | None = None


class Cleaned(BaseModel):
    status: Literal["ok"] = "ok"
    jobs_deleted: int
    objects_deleted: int
