"""Where the runner sends a job's frames: the partition where the fewest of them wait for a result."""

from runner.publish import Flow

PARTITIONS = [0, 1, 2, 3]


def publish(flow: Flow, frames: range) -> list[int]:
    placed = []
    for frame in frames:
        flow.published += 1
        placed.append(flow.place(frame, PARTITIONS))
    return placed


def test_frames_go_in_turn_while_every_partition_waits_as_long() -> None:
    flow = Flow(stored_before=0)
    assert publish(flow, range(0, 40, 5)) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_a_partition_whose_worker_falls_behind_gets_fewer_frames_until_it_catches_up() -> None:
    flow = Flow(stored_before=0)
    placed = dict(zip(range(8), publish(flow, range(8)), strict=True))
    fast = [frame for frame, partition in placed.items() if partition in (0, 1)]  # one worker's partitions
    flow.done(fast, len(fast))
    assert flow.stored == 4 and flow.changed.is_set()
    assert sorted(publish(flow, range(8, 12))) == [0, 0, 1, 1]  # the slow worker's 4 frames still wait
    flow.done([frame for frame, partition in placed.items() if partition in (2, 3)], 4)
    assert sorted(publish(flow, range(12, 16))) == [2, 2, 3, 3]


def test_results_counted_from_the_job_and_not_named_forget_the_oldest_frames() -> None:
    flow = Flow(stored_before=0)
    publish(flow, range(4))
    flow.stored = 2  # another runner stored two of them: read from the job, not named
    publish(flow, range(4, 5))
    assert list(flow.waiting) == [2, 3, 4]


def test_a_result_given_twice_or_for_a_frame_not_waiting_changes_nothing() -> None:
    flow = Flow(stored_before=0)
    publish(flow, range(2))
    flow.done([0], 1)
    flow.done([0, 99], 0)
    assert flow.stored == 1 and list(flow.waiting) == [1]
