"""The runner's lifecycle of a job (`runner_db.runner_predictions.status`), as one table.

    processing --complete--> predictable --export--> ready
    processing --fail------> failed ------export--> failed (its failure file written)
    predictable, failed --refuse (storage refuses the outcome)--> failed

Every status write is conditional on its move's sources (`where`): two runners, or a runner and the
S3 relay, racing for one job move it once. `ready` is final; `failed` only gains its stored outcome.
The runner makes the first two moves (`runner.jobs`), the S3 relay the others (`relays.s3`).
"""

from enum import StrEnum
from typing import Any

from events.statuses import RunnerStatus

PROCESSING, PREDICTABLE, READY, FAILED = (RunnerStatus.PROCESSING, RunnerStatus.PREDICTABLE, RunnerStatus.READY,
                                          RunnerStatus.FAILED)  # fmt: skip


class Move(StrEnum):
    COMPLETE = "complete"  # every frame's result is stored
    FAIL = "fail"  # the video cannot be processed, or resends brought nothing back
    EXPORT = "export"  # the job's outcome (detection or failure file) is in storage
    REFUSE = "refuse"  # storage refuses the outcome for good


MOVES: dict[Move, dict[RunnerStatus, RunnerStatus]] = {
    Move.COMPLETE: {PROCESSING: PREDICTABLE},
    Move.FAIL: {PROCESSING: FAILED},
    Move.EXPORT: {PREDICTABLE: READY, FAILED: FAILED},
    Move.REFUSE: {PREDICTABLE: FAILED, FAILED: FAILED},
}
OUTCOMES = (PREDICTABLE, FAILED)  # the statuses whose outcome the S3 relay writes to storage
WHILE_PROCESSING: dict[str, Any] = {"status": PROCESSING.value}  # what only a job in progress may get


def after(status: RunnerStatus, move: Move) -> RunnerStatus | None:
    """The status `move` takes a job in `status` to; None where the table has no such move."""
    return MOVES[move].get(status)


def where(move: Move, status: RunnerStatus | None = None) -> dict[str, Any]:
    """The MongoDB condition of `move` (from `status` only, if given): a write with it moves a job once."""
    sources = [status] if status is not None else list(MOVES[move])
    if not all(source in MOVES[move] for source in sources):
        raise ValueError(f"no move {move.value} from {status}")
    values = [source.value for source in sources]
    return {"status": values[0]} if len(values) == 1 else {"status": {"$in": values}}


def status_after(status: RunnerStatus, move: Move) -> str:
    """The value to write for `move` from `status` (ValueError where the table has none)."""
    if (target := after(status, move)) is None:
        raise ValueError(f"no move {move.value} from {status.value}")
    return target.value
