"""The runner's lifecycle table (events/runnerstate.py): which status follows which, and the write conditions."""

import pytest

from events.runnerstate import MOVES, OUTCOMES, Move, after, status_after, where
from events.statuses import RunnerStatus as S


@pytest.mark.parametrize(
    ("status", "move", "then"),
    [(S.PROCESSING, Move.COMPLETE, S.PREDICTABLE), (S.PROCESSING, Move.FAIL, S.FAILED),
     (S.PREDICTABLE, Move.EXPORT, S.READY), (S.FAILED, Move.EXPORT, S.FAILED),
     (S.PREDICTABLE, Move.REFUSE, S.FAILED), (S.FAILED, Move.REFUSE, S.FAILED),
     (S.PREDICTABLE, Move.FAIL, None), (S.READY, Move.FAIL, None), (S.FAILED, Move.COMPLETE, None),
     (S.PROCESSING, Move.EXPORT, None), (S.READY, Move.EXPORT, None)],
)  # fmt: skip
def test_each_status_has_only_the_moves_of_the_table(status, move, then) -> None:
    assert after(status, move) == then


def test_ready_is_final_and_every_other_status_has_a_way_to_an_end() -> None:
    assert all(S.READY not in sources for sources in MOVES.values())  # nothing moves a ready job
    for status in (S.PROCESSING, S.PREDICTABLE):
        assert any(status in sources for sources in MOVES.values())
    assert set(OUTCOMES) == set(MOVES[Move.EXPORT])  # the relay exports exactly the outcomes


def test_the_write_condition_names_the_moves_sources() -> None:
    assert where(Move.COMPLETE) == {"status": "processing"}
    assert where(Move.REFUSE) == {"status": {"$in": ["predictable", "failed"]}}
    assert where(Move.EXPORT, S.FAILED) == {"status": "failed"}
    assert status_after(S.PREDICTABLE, Move.EXPORT) == "ready"
    with pytest.raises(ValueError, match="no move export from processing"):
        status_after(S.PROCESSING, Move.EXPORT)
    with pytest.raises(ValueError, match="no move complete"):
        where(Move.COMPLETE, S.READY)
