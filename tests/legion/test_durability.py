"""The durability modes: which names are accepted, and the SQLite setting each one means."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legion import durability
from legion.errors import ConfigError


def test_the_two_modes_are_accepted_and_fsync_is_the_default() -> None:
    assert [durability.check_durability(mode) for mode in ("fsync", "async")] == ["fsync", "async"]
    assert durability.DEFAULT == "fsync"


@given(st.text(max_size=12).filter(lambda text: text not in ("fsync", "async")))
def test_anything_else_is_refused_naming_both_modes(text: str) -> None:
    with pytest.raises(ConfigError, match="--durability must be fsync or async"):
        durability.check_durability(text)


def test_fsync_mode_fsyncs_every_sqlite_commit_and_async_mode_only_at_checkpoints() -> None:
    assert durability.sqlite_synchronous("fsync") == "FULL"
    assert durability.sqlite_synchronous("async") == "NORMAL"
