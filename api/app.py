"""The API's app factory: a lifespan opens MongoDB and storage; the routes live in `api.routes`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import Services
from api.limits import BodySizeLimit
from api.routes import router
from events.clients import mongo_client, object_store
from events.contracts import OUTBOX, PREDICTIONS
from events.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mongo_client(settings.mongo_uri) as main, mongo_client(settings.runner_mongo) as runner:
            store = object_store(settings)
            await store.ensure_bucket(settings.default_bucket)
            app.state.services = Services(
                settings=settings,
                outbox=main[settings.main_db][OUTBOX],
                predictions=runner[settings.runner_db][PREDICTIONS],
                store=store,
            )
            yield

    app = FastAPI(title="vdetect", summary="Upload a video, get per-frame object detections", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.include_router(router, prefix="/api")
    return app
