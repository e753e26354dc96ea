"""The rule that decides when a quiet job's missing frames are sent again."""

from datetime import timedelta

from events.contracts import RunnerPrediction, utcnow
from runner.stalls import BROKER_LOST, why_resend

NOW = utcnow()


def job(tasks: dict[str, int], quiet_s: float = 10) -> RunnerPrediction:
    updated_at = NOW - timedelta(seconds=quiet_s)
    return RunnerPrediction.model_validate(
        {"_id": "j", "bucket": "videos", "object": "input/j.mp4", "tasks": tasks, "updated_at": updated_at}
    )


def why(tasks: dict[str, int], committed=None, ends=None, drained=False, busy=False, stalled=False, quiet_s=10):
    committed, ends = committed or {0: 0, 1: 0}, ends if ends is not None else {0: 100, 1: 100}
    return why_resend(job(tasks, quiet_s), committed, ends, drained, busy, stalled)


def test_frames_the_broker_no_longer_holds_are_sent_again_at_once_and_that_is_not_the_jobs_fault() -> None:
    assert why({"0": 40, "1": 41}, ends={0: 3, 1: 0}) == BROKER_LOST  # it restarted empty


def test_queued_frames_wait_however_long() -> None:
    assert why({"0": 40}, committed={0: 10, 1: 0}, busy=True, stalled=True) is None


def test_taken_frames_whose_results_are_all_consumed_are_lost_the_rest_wait_for_the_stall_timeout() -> None:
    taken = {"0": 40}, {0: 41, 1: 0}
    assert why(*taken, drained=True) == "its frames were taken and no result is on its way"
    assert why(*taken, drained=False) is None  # results may be queued for the runners
    assert why(*taken, drained=False, busy=True, stalled=True) is None  # taken only just now
    assert why(*taken, drained=False, stalled=True) == "no progress for STALL_TIMEOUT_S and nothing in flight"


def test_a_quiet_job_whose_fan_out_never_recorded_a_frame_lost_its_fan_out() -> None:
    # quiet means no beat for three beats: a fan-out still downloading or reading would have beaten
    assert why({}) == "its fan-out stopped before it recorded a frame"


def test_an_unknown_partition_end_decides_nothing() -> None:
    assert why({"7": 40}, ends={0: 0}) is None
