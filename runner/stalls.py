"""When a quiet job's missing frames are sent again: a pure rule over what Kafka's offsets tell.

Kafka keeps no per-message receipts, so where a job's frames are is read from offsets: the offset of
the job's last frame message per partition (recorded by its fan-out), the inference group's committed
offsets and the frame topic's end offsets, and whether the runners' group has consumed every result.
"""

from events import inflight
from events.contracts import RunnerPrediction

BEAT_S = 2.0  # a live fan-out refreshes its job and records its frame messages' offsets this often
LOST_AFTER_S = 3 * BEAT_S  # quiet this long, a job has no live fan-out; what is known gone is sent again
BROKER_LOST = "the broker no longer holds its frame messages"


def why_resend(
    job: RunnerPrediction, committed: dict[int, int], ends: dict[int, int], drained: bool, busy: bool, stalled: bool
) -> str | None:
    """Why a quiet job (no progress, and no fan-out beat, for LOST_AFTER_S) should get its missing frames
    sent again, or None.

    `committed` and `ends`: the inference group's committed offsets and the frame topic's ends;
    `drained`: the runners' group has consumed every result; `busy`: frames may be somewhere (see
    `Runner.in_flight`); `stalled`: no progress for STALL_TIMEOUT_S."""
    if inflight.lost(job.tasks, ends):
        return BROKER_LOST  # a broker that restarted empty, or one whose end fell behind what it acknowledged
    if not job.tasks:
        return "its fan-out stopped before it recorded a frame"  # its runner died
    if drained and not inflight.waiting(job.tasks, committed, ends):
        return "its frames were taken and no result is on its way"  # lost between acknowledgement and store
    return "no progress for STALL_TIMEOUT_S and nothing in flight" if stalled and not busy else None
