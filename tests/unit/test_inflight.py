"""Where messages sent to a group are (events/inflight.py), and when they are sent again."""

from events.inflight import Where, lost, resend, waiting, where


def test_messages_are_lost_when_the_topic_ends_before_them_and_waiting_while_the_group_is_behind() -> None:
    """Moved from test_clients.py with the rule (it was GroupOffsets.waiting and .lost)."""
    ends, committed = {0: 10, 1: 3}, {0: 4, 1: 3}
    assert waiting({"0": 7}, committed, ends) and not waiting({"0": 2}, committed, ends)
    assert lost({"1": 5}, ends)  # a broker that restarted empty numbers from 0 again
    assert not lost({"0": 9, "1": 2}, ends)  # still held (queued or consumed)
    assert not lost({"2": 50}, ends)  # a partition whose end is unknown decides nothing
    assert not lost({}, ends)


def test_lost_is_sent_again_at_once_queued_never_taken_after_patience() -> None:
    ends, committed = {0: 10, 1: 3}, {0: 4, 1: 3}
    assert where({"1": 5}, committed, ends) == Where.LOST
    assert where({"0": 7, "1": 1}, committed, ends) == Where.QUEUED  # one partition behind is enough
    assert where({"0": 2, "1": 1}, committed, ends) == Where.TAKEN
    assert resend(Where.LOST, None, 120)
    assert not resend(Where.QUEUED, 10_000, 120)  # a backlog or an outage only delays
    assert not resend(Where.TAKEN, None, 120) and not resend(Where.TAKEN, 119.9, 120)
    assert resend(Where.TAKEN, 120, 120)
