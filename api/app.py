"""The API's app factory: a lifespan opens MongoDB and storage; the routes live in `api.routes`."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.routing import Match

from api import projector
from api.deps import Services, key_check
from api.limits import ApiKeyGate, BodyLimits, JobQuota, SecurityHeaders, UploadSlots
from api.live import JobFeed
from api.projector import Projector
from api.readmodel import ReadModel
from api.registry import ModelRegistry
from api.routes import router
from events.clients import mongo_client, object_store
from events.contracts import MODELS, OUTBOX, SESSIONS
from events.indexes import MAIN_DB, ensure_indexes
from events.log import get_logger
from events.metrics import add_metrics_route
from events.modelfile import ModelError
from events.settings import Settings
from events.storage import PermanentStorageError

log = get_logger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
RETRY_AFTER_S = 5
DATABASE_TIMEOUT_S = 3  # an unreachable database is answered 503 within a few seconds, not after 30


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, ConnectionFailure) and not getattr(error, "timeout", False):
        raise error
    log.warning("database unreachable, request refused with 503", path=request.url.path, error=type(error).__name__)
    return JSONResponse(
        {"detail": "the database is unreachable; try again shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def register_builtin(models: ModelRegistry, settings: Settings) -> None:
    """The package's model under DEFAULT_MODEL's name; if storage refuses it, jobs that name no model
    still run the workers' own (their detection file then names no model)."""
    try:
        await models.register_builtin(settings.model_path)
    except (PermanentStorageError, ModelError, OSError) as error:
        log.error("the built-in model could not be registered", model=str(settings.model_path), error=str(error))


async def method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    """405 with an `Allow` that names every method of the path (Starlette names only the first route's)."""
    allowed = sorted({method for route in request.app.routes if isinstance(route, APIRoute)
                      and route.matches(request.scope)[0] != Match.NONE for method in route.methods or ()})  # fmt: skip
    return JSONResponse({"detail": "Method Not Allowed"}, status.HTTP_405_METHOD_NOT_ALLOWED,
                        headers={"Allow": ", ".join(allowed)})  # fmt: skip


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mongo_client(**settings.mongo(), timeoutMS=DATABASE_TIMEOUT_S * 1000) as main:
            store = object_store(settings)
            for bucket in sorted(settings.bucket_allowlist):  # the operator's buckets, never a client's
                try:
                    await store.ensure_bucket(bucket)
                except PermanentStorageError as error:  # a credential that may not create buckets
                    log.warning("allowed bucket not created", bucket=bucket, reason=error.reason)
            await ensure_indexes(main[settings.main_db], MAIN_DB)
            models = ModelRegistry(main[settings.main_db][MODELS], store, settings.default_bucket,
                                   settings.default_model_name)  # fmt: skip
            await register_builtin(models, settings)
            outbox, stop = main[settings.main_db][OUTBOX], asyncio.Event()
            # change streams wait longer than a request may: their own client, without the request timeout
            async with mongo_client(**settings.mongo()) as follower, asyncio.TaskGroup() as background:
                feed = JobFeed(follower[settings.main_db][OUTBOX], settings.max_event_streams_per_client,
                               settings.max_event_streams)  # fmt: skip
                app.state.services = Services(settings=settings, jobs=ReadModel(outbox), store=store, feed=feed,
                                              sessions=main[settings.main_db][SESSIONS], models=models)  # fmt: skip
                folded = Projector(ReadModel(follower[settings.main_db][OUTBOX]))
                tasks = [background.create_task(feed.run(stop)),
                         background.create_task(projector.run(settings, folded, stop))]  # fmt: skip
                try:
                    yield
                finally:
                    stop.set()
                    feed.close()  # live update streams end
                    for task in tasks:  # at least once: events being applied are applied again after a restart
                        task.cancel()

    # The reference is GET /openapi.json (every endpoint, with examples). No /docs page: Swagger UI loads
    # its scripts from a CDN, which a self-hosted machine may not reach and the page's CSP refuses.
    app = FastAPI(title="vdetect", summary="Upload a video, get per-frame object detections", lifespan=lifespan,
                  version="1.0", docs_url=None, redoc_url=None)  # fmt: skip
    # the last added runs first: the key, the jobs waiting, the uploads at once, then the body's size and pace
    app.add_middleware(BodyLimits, upload_bytes=settings.max_upload_bytes, other_bytes=settings.max_request_bytes,
                       idle_s=settings.upload_idle_timeout_s, min_rate=settings.upload_min_bytes_per_s,
                       model_bytes=settings.max_model_bytes)  # fmt: skip
    app.add_middleware(UploadSlots, slots=settings.max_concurrent_uploads)
    app.add_middleware(JobQuota, per_client=settings.max_waiting_jobs_per_client, total=settings.max_waiting_jobs)
    app.add_middleware(ApiKeyGate, key_matches=key_check(settings.api_key), origins=settings.cors_allowlist)
    if settings.cors_allowlist:  # no cross-origin access unless CORS_ORIGINS names the origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sorted(settings.cors_allowlist),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, method_not_allowed)
    app.include_router(router, prefix="/api")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: uploads, live job list, result player."""
        return FileResponse(STATIC / "index.html")

    return add_metrics_route(app)
