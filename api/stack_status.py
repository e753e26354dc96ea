"""What the local stack's supervisor says of its services (its status file), for `GET /api/health`.

Only `vdetect up` writes the file (STACK_STATUS_FILE); elsewhere (compose, Kubernetes) the
orchestrator watches each service's own health check, and the API reports only itself.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from api.schemas import ServiceDown

STALE_AFTER_S = 30  # the supervisor writes the file every 5 s at least


def services_down(path: Path, now: datetime | None = None) -> list[ServiceDown]:
    """The services that are not running, as of the file; one `stack` entry if the file is missing or stale."""
    try:
        status = json.loads(path.read_text())
        updated = datetime.fromisoformat(status["updated_at"])
        services = dict(status["services"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [ServiceDown(name="stack", state="unknown", reason=f"the stack's status cannot be read: {error}")]
    age = ((now or datetime.now(UTC)) - updated).total_seconds()
    if age > STALE_AFTER_S:
        reason = f"the stack's supervisor has not reported for {age:.0f} s"
        return [ServiceDown(name="stack", state="unknown", reason=reason)]
    return [
        ServiceDown(name=name, state=entry["state"], restarts=entry.get("restarts", 0), reason=entry.get("reason"))
        for name, entry in services.items()
        if entry.get("state") != "running"
    ]
