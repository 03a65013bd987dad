"""Numbers as text, the same in every face."""

from __future__ import annotations

from mlxlora.fmt import NONE, clock, counted


def test_a_duration_rounds_as_compares_seconds_do():
    """The Runs tab showed 22.96 s as 0:22 where Compare showed 23."""
    assert clock(22.96) == "0:23"
    assert clock(22.4) == "0:22"
    assert clock(3723) == "1:02:03"
    assert clock(None) == NONE


def test_one_thing_is_not_things():
    assert counted(1, "record") == "1 record"
    assert (counted(0, "step"), counted(2, "step")) == ("0 steps", "2 steps")
