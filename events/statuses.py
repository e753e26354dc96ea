"""Job statuses: the ones clients see (outbox) and the runner's internal ones."""

from enum import StrEnum


class OutboxStatus(StrEnum):
    NEW = "new"
    SENT = "sent"
    READY = "ready"
    FAILED = "failed"


class RunnerStatus(StrEnum):
    PROCESSING = "processing"
    PREDICTABLE = "predictable"
    READY = "ready"
    FAILED = "failed"


DESCRIPTIONS: dict[str, str] = {
    OutboxStatus.NEW: "Event created, waiting to be sent for processing",
    OutboxStatus.SENT: "Sent to the processing queue; frames are being detected",
    OutboxStatus.READY: "Result saved to storage and ready to be fetched",
    OutboxStatus.FAILED: "Processing failed",
}
