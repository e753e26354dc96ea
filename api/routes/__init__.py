"""The API's endpoints under /api, one module per resource; the business actions are `api.commands`,
every query of the read model `api.readmodel`."""

from fastapi import APIRouter

from api.routes import events, health, jobs, models, results, session, tracks, uploads
from api.routes.common import ERRORS

router = APIRouter(responses=ERRORS)
router.add_api_route("", health.health, methods=["GET"], include_in_schema=False)  # /api itself
for part in (health, uploads, jobs, results, tracks, events, session, models):
    router.include_router(part.router)
