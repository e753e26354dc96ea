"""All configuration, from environment variables (the original names kept: MONGO_URI, MINIO_ENDPOINT, ...).

SECRETS_DIR names a folder of files, one per setting (`API_KEY`, `MONGO_PASSWORD`, ...), each holding its
value: a Kubernetes Secret mounted as a volume. A variable of the environment wins over a file.
"""

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SecretsSettingsSource, SettingsConfigDict

from events import topics
from events.ports import DEFAULT as PORTS

TOPIC_PREFIX = re.compile(r"[a-zA-Z0-9._-]*")
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "inference" / "models" / "yolov10n.onnx"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment, then the files of SECRETS_DIR (read when the settings are made, not imported)."""
        folder = os.environ.get("SECRETS_DIR")
        files = SecretsSettingsSource(settings_cls, secrets_dir=folder) if folder else file_secret_settings
        return init_settings, env_settings, dotenv_settings, files

    # MongoDB: the API and the outbox relay use MONGO_URI, the runner and the S3 relay RUNNER_MONGO_URI.
    # Credentials go best in MONGO_USERNAME/MONGO_PASSWORD: passed to the client as they are, so a
    # password needs no URL-encoding (a `+`, `/`, `@`, `:` or `%` in a URI breaks it).
    mongo_uri: SecretStr = SecretStr(f"mongodb://127.0.0.1:{PORTS.mongo}/?directConnection=true")
    runner_mongo_uri: SecretStr | None = Field(default=None, description="defaults to MONGO_URI")
    mongo_username: str | None = None
    mongo_password: SecretStr | None = None
    main_db: str = "main_db"
    runner_db: str = "runner_db"

    # Kafka. Idempotence must be on for Apache Kafka and off for Tansu (it refuses InitProducerId).
    kafka_bootstrap_servers: str = f"127.0.0.1:{PORTS.kafka}"
    kafka_idempotence: bool = False
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1, description="replicas of each topic `topics` creates")
    kafka_session_timeout_ms: int = 10_000
    kafka_fetch_max_wait_ms: int = Field(
        default=100, ge=1, description="how long the broker may hold a consumer's fetch when nothing is waiting"
    )

    # Object storage: a local directory (local stack) or any S3 endpoint (MinIO).
    storage_backend: Literal["dir", "s3"] = "dir"
    storage_dir: Path = Path("data/storage")
    minio_endpoint: str = "127.0.0.1:9000"
    minio_access_key: SecretStr | None = None
    minio_secret_key: SecretStr | None = None
    minio_secure: bool = False
    minio_region: str | None = None
    default_bucket: str = "videos"
    allowed_buckets: str = Field(
        default="", description="comma-separated buckets clients may name; empty: DEFAULT_BUCKET"
    )

    # Runner.
    frame_stride: int = Field(default=5, ge=1)
    frame_encoding: Literal["i420", "jpeg"] = Field(
        default="i420", description="frames to inference: the decoder's samples (lossless) or JPEG (JPEG_QUALITY)"
    )
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    frame_store_dir: Path | None = Field(
        default=None,
        description="frames go to inference as files in this folder (tmpfs; runner and workers on one machine)"
        " rather than in their messages; unset: through the broker (`events.framestore`)",
    )
    frame_store_max_mb: int = Field(default=1024, ge=1, description="what one runner keeps in the frame store")
    model_input_size: int = Field(
        default=640, ge=32, description="frames are scaled down to this long side (the model's input) before sending"
    )
    preprocess_workers: int = Field(default=2, ge=1)
    runner_results_wait_ms: int = Field(
        default=100, ge=0, description="results gathered this long before one write per job stores them"
    )
    runner_active_jobs: int = Field(default=4, ge=1, description="jobs the runner fans out at once")
    runner_frames_in_flight: int = Field(
        default=64, ge=1, description="frames of one job published and not stored yet before the runner waits"
    )
    stall_timeout_s: float = Field(
        default=120.0, gt=0, description="no progress for this long while none of the job's frames is in flight: resend"
    )
    render_max_seconds: float = Field(
        default=4 * 3600.0, gt=0, description="a rendering that takes longer fails (the job's detections do not)"
    )
    max_resends: int = Field(default=3, ge=0, description="resends in a row that bring nothing back before a job fails")
    # What one video may cost: checked when its job starts (what the container declares) and while it is
    # decoded (what it holds); a video past them fails its job with the reason.
    max_video_frames: int = Field(default=1_000_000, ge=1, description="frames in one video (4.6 h at 60 fps)")
    max_video_seconds: float = Field(default=4 * 3600, gt=0, description="the duration of one video")
    video_probe_memory_mb: int = Field(
        default=256, ge=32, description="memory the container's index may take when a video is first opened"
    )
    video_probe_timeout_s: float = Field(default=60.0, gt=0, description="time a video may take to open")

    # Inference.
    model_path: Path = Field(default=DEFAULT_MODEL, description="the built-in model, registered as DEFAULT_MODEL")
    default_model: str = Field(
        default="", description="the model a job runs when it names none; empty: MODEL_PATH's name without .onnx"
    )
    inference_max_models: int = Field(default=4, ge=1, description="models one inference worker keeps loaded")
    max_model_bytes: int = Field(default=512 * 1024**2, gt=0, description="the largest model file an import takes")
    conf_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, ge=0, le=1)
    max_detections: int = Field(default=300, ge=1, description="at most this many boxes per frame, best first")
    inference_threads: int = Field(default=0, ge=0, description="threads of the engine; 0: all cores")
    inference_engine: Literal["auto", "openvino", "onnxruntime"] = Field(
        default="auto",
        description="auto: OpenVINO on an x86-64 CPU if installed, else ONNX Runtime (on GPUs too)",
    )
    inference_precision: Literal["auto", "f32", "bf16"] = Field(
        default="auto", description="OpenVINO's; auto: bf16 where the CPU computes it natively (AMX), f32 elsewhere"
    )
    inference_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="cuda: ONNX Runtime's CUDA provider (onnxruntime-gpu); auto: CUDA if present"
    )
    inference_batch_size: int = Field(default=4, ge=1)
    inference_batch_wait_ms: int = Field(default=10, ge=0, description="how long to wait to fill a batch")

    # Relays: how often a quiet change stream still persists its post-batch resume token.
    relay_checkpoint_interval_s: float = Field(default=10.0, gt=0)

    # API.
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_concurrent_uploads: int = Field(default=8, ge=1, description="more uploads at once get 503 with Retry-After")
    max_request_bytes: int = Field(default=1024**2, gt=0, description="the body of any request but an upload")
    upload_idle_timeout_s: float = Field(default=30.0, gt=0, description="a body with no byte for this long: 408")
    upload_min_bytes_per_s: int = Field(
        default=16 * 1024, gt=0, description="a body slower than this on average (after 10 s): 408"
    )
    max_event_streams: int = Field(default=1000, ge=1, description="live update streams open in all; more: 429")
    max_event_streams_per_client: int = Field(default=16, ge=1, description="of one client address; more: 429")
    max_waiting_jobs: int = Field(default=1000, ge=1, description="jobs waiting or in progress in all; more: 429")
    max_waiting_jobs_per_client: int = Field(
        default=100, ge=1, description="jobs waiting or in progress of one client address; more: 429"
    )
    api_key: SecretStr | None = Field(default=None, description="when set, every /api path but health needs it")
    session_ttl_s: float = Field(default=12 * 3600, gt=0, description="how long a sign-in of the web page lasts")
    session_cookie_secure: bool = Field(
        default=False, description="always mark the session cookie Secure (it is over https or X-Forwarded-Proto)"
    )
    allow_anonymous: bool = Field(default=False, description="start on a network address without API_KEY")
    cors_origins: str = Field(default="", description="comma-separated origins allowed cross-origin; empty: none")
    stack_status_file: Path | None = Field(
        default=None, description="the local stack's status file (set by `vdetect up`): health names services down"
    )

    # Webhooks: a signed POST to a job's callback_url when it ends.
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC key of the signature; unset: no webhooks")
    webhook_allow_private: bool = Field(default=False, description="allow callback URLs on private networks")
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="first retry delay; doubles with each attempt")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="a receiver must answer 2xx within this")
    public_url: str = Field(
        default=f"http://127.0.0.1:{PORTS.api}", description="the API as clients reach it (result_url)"
    )

    # HTTP: the port plan's defaults (events/ports.py).
    bind_host: str = "127.0.0.1"
    api_port: int = PORTS.api
    runner_port: int = PORTS.runner
    inference_port: int = PORTS.inference
    outbox_relay_port: int = PORTS.outbox_relay
    s3_relay_port: int = PORTS.s3_relay
    webhook_relay_port: int = PORTS.webhook_relay
    render_port: int = PORTS.render

    log_level: str = "INFO"

    @field_validator("webhook_secret", "api_key", "mongo_username", "mongo_password", "frame_store_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty value (compose's `${WEBHOOK_SECRET:-}`) means unset: never an empty key that an empty
        header would match, nor the current folder as the frame store."""
        return None if value == "" else value

    def mongo(self, runner: bool = False) -> dict[str, Any]:
        """The arguments of a MongoDB client: `mongo_client(**settings.mongo())`. `runner`: the runner's
        database server (RUNNER_MONGO_URI, by default MONGO_URI)."""
        uri = (self.runner_mongo_uri if runner and self.runner_mongo_uri else self.mongo_uri).get_secret_value()
        credentials: dict[str, Any] = {}
        if self.mongo_username is not None:
            credentials["username"] = self.mongo_username
        if self.mongo_password is not None:
            credentials["password"] = self.mongo_password.get_secret_value()
        return {"host": uri, **credentials}

    @field_validator("kafka_topic_prefix")
    @classmethod
    def _legal_topic_names(cls, prefix: str) -> str:
        """Kafka topic names are at most 249 of [a-zA-Z0-9._-]; some brokers (Tansu) accept any name."""
        if not TOPIC_PREFIX.fullmatch(prefix):
            raise ValueError("a topic prefix may hold only letters, digits, '.', '_' and '-'")
        if len(prefix) + max(map(len, topics.ALL)) > 249:
            raise ValueError("topic names would be longer than 249 characters")
        return prefix

    @property
    def cors_allowlist(self) -> set[str]:
        return {origin.strip() for origin in self.cors_origins.split(",") if origin.strip()}

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.model_path.name.removesuffix(".onnx")

    @property
    def bucket_allowlist(self) -> set[str]:
        """The buckets clients may name: ALLOWED_BUCKETS, or only DEFAULT_BUCKET when it is empty."""
        return {name.strip() for name in self.allowed_buckets.split(",") if name.strip()} or {self.default_bucket}

    @property
    def stall_check_interval_s(self) -> float:
        """How often the runner and the outbox relay look for stalled jobs."""
        return min(self.stall_timeout_s / 4, 15)

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"
