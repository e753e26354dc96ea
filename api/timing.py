"""Processing times as the API shows them."""

from datetime import UTC, datetime


def elapsed_seconds(start: datetime, end: datetime | None) -> float:
    end = end or datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return round(max((end - start).total_seconds(), 0.0), 3)


def format_duration(seconds: float) -> str:
    """45 -> "45s", 125 -> "2m 5s", 3725 -> "1h 2m 5s"."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
