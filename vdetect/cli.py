"""`vdetect <service>` starts one service; `vdetect up` starts the whole local stack."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from events.ports import PortPlan

PLAN = PortPlan()  # the default ports
LOCAL_API = f"http://127.0.0.1:{PLAN.api}"

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def api() -> None:
    """The HTTP API (port 8080)."""
    import asyncio

    import uvicorn

    from api.app import create_app
    from events.log import configure_logging
    from events.runtime import load_settings, refuse_open_network

    settings = load_settings()
    configure_logging("api", settings.log_level)
    refuse_open_network(settings)
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # live update streams end first: the graceful shutdown then does not wait for them
            if services := getattr(app.state, "services", None):
                asyncio.get_running_loop().call_soon_threadsafe(services.feed.close)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(app, host=settings.bind_host, port=settings.api_port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=30)  # fmt: skip
    Server(config).run()


@app.command("outbox-relay")
def outbox_relay() -> None:
    """Relay new outbox documents to Kafka (`outbox_events`)."""
    from events.runtime import run_service
    from relays.outbox import main

    run_service("outbox-relay", main)


@app.command("s3-relay")
def s3_relay() -> None:
    """Write finished predictions to object storage (`detection/{id}.json`)."""
    from events.runtime import run_service
    from relays.s3 import main

    run_service("s3-relay", main)


@app.command("webhook-relay")
def webhook_relay() -> None:
    """POST a signed webhook to each finished job's callback_url (retried, at least once)."""
    from events.runtime import run_service
    from relays.webhooks import main

    run_service("webhook-relay", main)


@app.command()
def render() -> None:
    """Make finished jobs' annotated videos (`annotated/{id}.mp4`) when asked (health on port 8001)."""
    from events.runtime import run_service
    from render.service import main

    run_service("render", main)


@app.command()
def runner() -> None:
    """Extract frames, fan them out to inference, collect the results (health on port 8002)."""
    from events.runtime import run_service
    from runner.service import main

    run_service("runner", main)


@app.command()
def inference() -> None:
    """Run the YOLO detector on frames (port 8003)."""
    from events.runtime import run_service
    from inference.service import main

    run_service("inference", main)


@app.command()
def topics() -> None:
    """Create the Kafka topics if they are missing (KAFKA_PARTITIONS partitions and KAFKA_REPLICATION_FACTOR
    replicas each), then exit; exit 1 if the broker refuses one."""
    import asyncio

    from events.clients import TopicsRefused, ensure_topics
    from events.log import configure_logging, get_logger
    from events.runtime import load_settings

    settings = load_settings()
    configure_logging("topics", settings.log_level)
    try:
        asyncio.run(ensure_topics(settings))
    except TopicsRefused as refused:
        get_logger("topics").error("kafka refused to create topics", refused=refused.refused)
        raise typer.Exit(1) from None


@app.command("storage-init")
def storage_init() -> None:
    """Create the buckets and the application's MinIO user, limited to them (needs MINIO_ROOT_USER and
    MINIO_ROOT_PASSWORD; the user is MINIO_ACCESS_KEY / MINIO_SECRET_KEY), then exit."""
    from events.log import configure_logging
    from events.runtime import load_settings
    from vdetect.provision import RootCredentials, provision_storage

    settings = load_settings()
    configure_logging("storage-init", settings.log_level)
    provision_storage(settings, RootCredentials())


@app.command()
def health(
    port: Annotated[int, typer.Option(help="the service's HTTP port")] = PLAN.api,
    path: Annotated[str, typer.Option(help="the health path")] = "/health",
) -> None:
    """Exit 0 if the service on this machine answers its health check and does not say `"ready": false`
    (a consumer that has not joined its group yet); for container healthchecks."""
    import httpx

    try:
        answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=4)
        ok = answer.status_code == 200 and answer.json().get("ready", True) is not False
    except (httpx.HTTPError, ValueError):
        ok = False
    raise typer.Exit(0 if ok else 1)


ApiUrl = Annotated[str, typer.Option("--api", envvar="VDETECT_API", help="the API's address")]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="VDETECT_API_KEY", help="X-API-Key, if the API needs one")
]
Output = Annotated[
    Path | None, typer.Option(help="write the result: .json (the result_video answer), .csv, .txt (MOT tracks)")
]


class ResultFormat(StrEnum):
    json = "json"
    csv = "csv"
    mot = "mot"
    coco = "coco"


OutputFormat = Annotated[ResultFormat | None, typer.Option("--format", help="what --output holds; default: its suffix")]


def _client(action) -> None:  # noqa: ANN001
    from vdetect.client import USAGE, ClientError

    try:
        code = action()
    except ClientError as error:
        typer.echo(f"error: {error}", err=True)
        code = USAGE
    raise typer.Exit(code)


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(help="videos to upload")],
    api: ApiUrl = LOCAL_API,
    api_key: ApiKey = None,
    wait: Annotated[bool, typer.Option(help="follow each job's progress until it ends")] = False,
    output: Output = None,
    model: Annotated[
        str | None, typer.Option(help="the model's name (`vdetect model list`); default: the API's")
    ] = None,
    track: Annotated[
        bool | None, typer.Option("--track/--no-track", help="track ids and a summary (default on)")
    ] = None,
    zones: Annotated[
        str | None, typer.Option(help='lines and polygons to count, JSON or @file: [{"name": "door", "line": ...}]')
    ] = None,
    render: Annotated[bool, typer.Option(help="make the annotated video (GET /api/jobs/{id}/annotated.mp4)")] = False,
    output_format: OutputFormat = None,
) -> None:
    """Upload videos (prints their event ids); with --wait, show progress until they end.

    Exit status: 0 every job ready, 1 any failed, 2 a usage or connection error."""
    from vdetect import client

    _client(lambda: client.submit(files, api, api_key, wait, output, model, client.job_fields(track, zones, render),
                                  output_format and output_format.value))  # fmt: skip


model_app = typer.Typer(no_args_is_help=True, help="The detection models jobs may name.")
app.add_typer(model_app, name="model")


@model_app.command("import")
def model_import(
    file: Annotated[Path, typer.Argument(help="an Ultralytics detection checkpoint (.pt) or an ONNX export")],
    name: Annotated[str | None, typer.Option(help="the name jobs give; default: the file's name")] = None,
    api: ApiUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """Import a model: a .pt is exported to ONNX here first (needs `pip install -e '.[export]'`; loading a
    checkpoint runs its code: import only checkpoints you trust). Prints name, sha256, layout, classes.

    Exit status: 0 imported, 2 refused (with why) or the API cannot be reached."""
    from vdetect import models

    _client(lambda: models.import_model(file, name, api, api_key))


@model_app.command("list")
def model_list(api: ApiUrl = LOCAL_API, api_key: ApiKey = None) -> None:
    """The models jobs may name, with their classes, input size, layout, hash and source."""
    from vdetect import models

    _client(lambda: models.list_models(api, api_key))


@app.command()
def jobs(
    api: ApiUrl = LOCAL_API,
    api_key: ApiKey = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="the oldest N jobs")] = 100,
) -> None:
    """A table of jobs with their status and progress."""
    from vdetect import client

    _client(lambda: client.jobs(api, api_key, limit))


@app.command()
def status(api: ApiUrl = LOCAL_API, api_key: ApiKey = None) -> None:
    """Which services of the stack are down, and why (from `GET /api/health`).

    Exit status: 0 every service running, 1 any down, 2 the API cannot be reached."""
    from vdetect import client

    _client(lambda: client.status(api, api_key))


@app.command()
def result(
    event_id: Annotated[str, typer.Argument(help="the job's event id")],
    api: ApiUrl = LOCAL_API,
    api_key: ApiKey = None,
    output: Output = None,
    output_format: OutputFormat = None,
) -> None:
    """Print a job's result as JSON (or write it with --output: JSON, CSV, MOT or COCO); exit 1 unless it is
    ready."""
    from vdetect import client

    _client(lambda: client.result(event_id, api, api_key, output, output_format and output_format.value))


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="where databases, objects and logs live")] = Path("data"),
    mongo_port: Annotated[int, typer.Option(help="SecantusDB (MongoDB wire protocol)")] = PLAN.mongo,
    kafka_port: Annotated[int, typer.Option(help="Tansu (Kafka protocol)")] = PLAN.kafka,
    api_port: int = PLAN.api,
    runner_port: int = PLAN.runner,
    inference_port: Annotated[
        int, typer.Option(help="inference worker 0; each further worker the next port up that no other service has")
    ] = PLAN.inference,
    outbox_relay_port: int = PLAN.outbox_relay,
    s3_relay_port: int = PLAN.s3_relay,
    webhook_relay_port: int = PLAN.webhook_relay,
    render_port: int = PLAN.render,
    inference_workers: Annotated[
        int, typer.Option(help="inference worker processes; 0: one per core, each with one ONNX Runtime thread")
    ] = 0,
) -> None:
    """Start SecantusDB, Tansu and every service on this machine; Ctrl-C stops them all.

    Exit status 2, before anything starts, if two services would share a port or one is taken."""
    from vdetect.stack import run_stack

    ports = PortPlan(
        mongo_port, kafka_port, api_port, runner_port, inference_port, outbox_relay_port, s3_relay_port,
        webhook_relay_port, render_port,
    )  # fmt: skip
    raise typer.Exit(run_stack(data_dir.resolve(), ports, inference_workers))
