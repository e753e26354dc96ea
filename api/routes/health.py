"""`GET /api/health`: the API answers, and on the local stack which services are down."""

from fastapi import APIRouter, Request

from api import sessions
from api.deps import ServicesDep, key_check
from api.schemas import Health
from api.stack_status import services_down

router = APIRouter()


@router.get("/")
@router.get("/health")
async def health(services: ServicesDep, request: Request) -> Health:
    """The API answers; with the local stack, also which of its services are down, and why to those who
    hold the key (when API_KEY is set: health answers anyone, and a reason tells of the insides)."""
    path = services.settings.stack_status_file
    down = services_down(path) if path is not None else []
    matches = key_check(services.settings.api_key)
    if down and matches and not matches(request.headers.get("x-api-key")):
        token = request.cookies.get(sessions.COOKIE)
        if token is None or not await sessions.is_valid(services.sessions, token):
            down = [service.model_copy(update={"reason": None}) for service in down]
    return Health(status="degraded" if down else "ok", down=down)
