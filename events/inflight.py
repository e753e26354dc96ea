"""Where messages sent to a consumer group are, from Kafka's offsets alone: the one rule by which the
runner (a job's frame messages, for the inference group) and the outbox relay (a job's outbox event,
for the runners' group) decide to send something again.

Kafka keeps no per-message receipts. Messages (partition -> offset of the last one sent there) are
- LOST when the topic no longer holds one of them (a broker that restarted empty numbers from 0 again;
  Tansu's in-memory log at times answers an end below messages it acknowledged, and serves nothing
  past it until the next message arrives there): sent again at once;
- QUEUED while the group has not committed past one of them: a backlog or an outage only delays them;
- TAKEN once the group committed past them all: their effect is on its way, or they were lost between
  being taken and having their effect, which only patience tells (`resend`).
"""

from enum import StrEnum

Offsets = dict[str, int] | dict[int, int]


class Where(StrEnum):
    LOST = "lost"
    QUEUED = "queued"
    TAKEN = "taken"


def lost(offsets: Offsets, ends: dict[int, int]) -> bool:
    """The topic no longer holds some of these messages. Reliable soon after a broker restarted empty,
    before its new log grows past the old offsets; after that, patience finds what was lost. A partition
    whose end is unknown decides nothing."""
    return any(int(p) in ends and offset >= ends[int(p)] for p, offset in offsets.items())


def waiting(offsets: Offsets, committed: dict[int, int], ends: dict[int, int]) -> bool:
    """Some of these messages are still waiting for the group (held by the topic, not committed past)."""
    return any(committed.get(int(p), 0) <= offset < ends.get(int(p), 0) for p, offset in offsets.items())


def where(offsets: Offsets, committed: dict[int, int], ends: dict[int, int]) -> Where:
    if lost(offsets, ends):
        return Where.LOST
    return Where.QUEUED if waiting(offsets, committed, ends) else Where.TAKEN


def resend(place: Where, waited_s: float | None, patience_s: float) -> bool:
    """Whether to send the messages again: at once when lost; never while queued; once taken, when their
    effect has not come `patience_s` after they were seen taken (`waited_s`; None: not known yet)."""
    if place == Where.LOST:
        return True
    return place == Where.TAKEN and waited_s is not None and waited_s >= patience_s
