"""When a quiet job's missing frames are sent again: a pure rule over what Kafka's offsets tell.

Kafka keeps no per-message receipts, so where a job's frames are is read from offsets: the offset of
the job's last frame message per partition (recorded by its fan-out), the inference group's committed
offsets and the frame topic's end offsets, and whether the runners' group has consumed every result.
"""

from datetime import datetime

from events.clients import GroupOffsets
from events.contracts import RunnerPrediction

LOST_AFTER_S = 5.0  # a quiet job whose missing frames are known to be gone is resent after this
BROKER_LOST = "the broker no longer holds its frame messages"


def why_resend(
    job: RunnerPrediction,
    committed: dict[int, int],
    ends: dict[int, int],
    drained: bool,
    busy: bool,
    stalled: bool,
    beaten_after: datetime,
) -> str | None:
    """Why a quiet job (no progress for LOST_AFTER_S) should get its missing frames sent again, or None.

    `committed` and `ends`: the inference group's committed offsets and the frame topic's ends;
    `drained`: the runners' group has consumed every result; `busy`: frames may be somewhere (see
    `Runner.in_flight`); `stalled`: no progress for STALL_TIMEOUT_S; `beaten_after`: a fan-out alive
    would have beaten since then."""
    if GroupOffsets.lost(job.tasks, ends):
        return BROKER_LOST  # a broker that restarted empty
    if not job.tasks:
        # no frame message recorded: a fan-out that stopped before its first beat (its runner died)
        return "its fan-out stopped" if job.updated_at and job.updated_at < beaten_after else None
    if drained and not GroupOffsets.waiting(job.tasks, committed, ends):
        return "its frames were taken and no result is on its way"  # lost between acknowledgement and store
    return "no progress for STALL_TIMEOUT_S and nothing in flight" if stalled and not busy else None
