"""Durable state: atomic batches, the single-process lock, corrupt files, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.state import Backfill, Changes, State, StateError


def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    state = State.open(path)
    state.commit(
        Changes(
            handled=[("a", 100.0), ("b", 200.0)],
            tracked=[("c", 300.0)],
            cursor=["x", "y"],
            backfill=Backfill(until=50.0, after="b"),
            snapshots={"metrics": b"\x00blob"},
        )
    )
    state.mark_exported(["a"])
    state.close()
    state = State.open(path)
    assert state.tracked() == {"c": 300.0}
    assert state.cursor() == ["x", "y"]
    assert state.backfill() == Backfill(until=50.0, after="b")
    assert state.snapshot("metrics") == b"\x00blob"
    assert state.handled(["a", "b", "z"]) == {"a", "b"}
    assert state.unexported(10) == ["b"]
    state.commit(Changes(backfill_done=True, untracked=["c"]))
    assert state.backfill() is None
    assert state.tracked() == {}
    state.close()


def test_failed_commit_changes_nothing(tmp_path: Path) -> None:
    state = State.open(str(tmp_path / "s.sqlite"))
    state.commit(Changes(handled=[("a", 1.0)], cursor=["a"]))
    bad = Changes(handled=[("b", 2.0)], cursor=["b"], snapshots={"metrics": object()})  # type: ignore[dict-item]
    with pytest.raises(Exception):  # noqa: B017 - any failure will do; the point is the rollback
        state.commit(bad)
    assert state.cursor() == ["a"]
    assert state.handled(["a", "b"]) == {"a"}
    state.close()


def test_second_process_refuses(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    first = State.open(path)
    with pytest.raises(StateError, match="in use by another bem-exporter process"):
        State.open(path)
    first.close()
    State.open(path).close()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"not a readable bem-exporter state file.*move it aside"):
        State.open(str(path))
    assert path.read_bytes().startswith(b"this is not sqlite")  # never silently reset


def test_prune_counts_undelivered(tmp_path: Path) -> None:
    state = State.open(str(tmp_path / "s.sqlite"))
    state.commit(Changes(handled=[("old-sent", 10.0), ("old-waiting", 20.0), ("new", 1000.0)]))
    state.mark_exported(["old-sent"])
    assert state.prune(created_before=500.0) == 1
    assert state.handled(["old-sent", "old-waiting", "new"]) == {"new"}
    state.close()


def test_memory_state_needs_no_file() -> None:
    state = State.open(":memory:")
    state.commit(Changes(cursor=["a"]))
    assert state.cursor() == ["a"]
    state.close()
