"""The StateStore contract, run against every engine (tests/state_engines.py).

Each test opens the engine's store through the `store` fixture (an opener: calling it again
after `close()` is a restart) and drives it with asyncio.run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from state_engines import ENGINES, Opener, opener

from exporter.state import Backfill, Changes, StateStore, StateWriteError, Stored

T = TypeVar("T")


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return opener(str(request.param), tmp_path, request)


def run(store: Opener, work: Callable[[StateStore], Awaitable[T]]) -> T:
    """Open the store, do `work`, close it: one process's life."""

    async def life() -> T:
        state = await store()
        try:
            return await work(state)
        finally:
            await state.close()

    return asyncio.run(life())


FULL = Changes(
    handled=[("a", 100.0), ("b", 200.0)],
    tracked=[("c", 300.0), ("d", 400.0)],
    cursor=["x", "y"],
    backfill=Backfill(until=50.0, after="b"),
    snapshots={"metrics": b"\x00blob", "canary": b"\xffother"},
)


def test_a_new_store_is_empty(store: Opener) -> None:
    async def work(state: StateStore) -> tuple[Stored, int, list[str]]:
        return await state.load(), await state.count_unexported(), await state.unexported(10)

    assert run(store, work) == (Stored(), 0, [])


def test_commit_is_loaded_back_now_and_after_reopen(store: Opener) -> None:
    async def commit_and_load(state: StateStore) -> Stored:
        await state.commit(FULL)
        return await state.load()

    expected = Stored(
        cursor=["x", "y"],
        tracked={"c": 300.0, "d": 400.0},
        backfill=Backfill(until=50.0, after="b"),
        snapshots={"metrics": b"\x00blob", "canary": b"\xffother"},
    )
    assert run(store, commit_and_load) == expected
    assert run(store, lambda state: state.load()) == expected


def test_a_later_commit_changes_only_what_it_names(store: Opener) -> None:
    async def work(state: StateStore) -> Stored:
        await state.commit(FULL)
        await state.commit(Changes(untracked=["c"], backfill_done=True, snapshots={"metrics": b"new"}))
        return await state.load()

    loaded = run(store, work)
    assert loaded == Stored(
        cursor=["x", "y"], tracked={"d": 400.0}, backfill=None, snapshots={"metrics": b"new", "canary": b"\xffother"}
    )


def test_backfill_progress_replaces_the_previous(store: Opener) -> None:
    async def work(state: StateStore) -> Backfill | None:
        await state.commit(Changes(backfill=Backfill(until=10.0)))
        await state.commit(Changes(backfill=Backfill(until=10.0, after="k")))
        return (await state.load()).backfill

    assert run(store, work) == Backfill(until=10.0, after="k")


def test_handled_answers_which_ids_were_handled_in_any_number(store: Opener) -> None:
    many = [(f"id-{n}", float(n)) for n in range(1200)]  # more than one statement's worth

    async def work(state: StateStore) -> tuple[set[str], set[str], set[str]]:
        await state.commit(Changes(handled=many))
        asked = [f"id-{n}" for n in range(0, 2400, 2)]
        return await state.handled(asked), await state.handled([]), await state.handled(["nope"])

    found, empty, missing = run(store, work)
    assert found == {f"id-{n}" for n in range(0, 1200, 2)}
    assert empty == set() and missing == set()


def test_a_failed_commit_changes_nothing(store: Opener) -> None:
    async def work(state: StateStore) -> tuple[Stored, set[str]]:
        await state.commit(Changes(handled=[("a", 1.0)], cursor=["a"], snapshots={"metrics": b"one"}))
        bad = Changes(
            handled=[("b", 2.0)],
            tracked=[("t", 2.0)],
            cursor=["b"],
            backfill=Backfill(until=1.0),
            snapshots={"metrics": b"two", "canary": object()},  # type: ignore[dict-item]
        )
        with pytest.raises(StateWriteError):
            await state.commit(bad)
        await state.commit(Changes())  # and the store is still usable
        return await state.load(), await state.handled(["a", "b"])

    loaded, handled = run(store, work)
    assert loaded == Stored(cursor=["a"], snapshots={"metrics": b"one"})
    assert handled == {"a"}


def test_unexported_oldest_first_with_limit_and_skip(store: Opener) -> None:
    async def work(state: StateStore) -> tuple[list[str], list[str], list[str], int]:
        await state.commit(Changes(handled=[("late", 30.0), ("early", 10.0), ("mid", 20.0), ("last", 40.0)]))
        await state.mark_exported(["mid"])
        return (
            await state.unexported(10),
            await state.unexported(2),
            await state.unexported(2, skip=["early"]),
            await state.count_unexported(),
        )

    assert run(store, work) == (["early", "late", "last"], ["early", "late"], ["late", "last"], 3)


def test_handling_again_keeps_the_export_mark(store: Opener) -> None:
    async def work(state: StateStore) -> list[str]:
        await state.commit(Changes(handled=[("a", 1.0)]))
        await state.mark_exported(["a"])
        await state.commit(Changes(handled=[("a", 1.0)]))
        return await state.unexported(10)

    assert run(store, work) == []


def test_prune_forgets_old_marks_and_counts_undelivered_ones(store: Opener) -> None:
    async def work(state: StateStore) -> tuple[int, set[str], list[str]]:
        await state.commit(
            Changes(handled=[("old-sent", 10.0), ("old-waiting", 20.0), ("old-in-memory", 30.0), ("new", 1000.0)])
        )
        await state.mark_exported(["old-sent"])
        dropped = await state.prune(500.0, keep=["old-in-memory", "new"])
        everything = ["old-sent", "old-waiting", "old-in-memory", "new"]
        return dropped, await state.handled(everything), await state.unexported(10)

    dropped, left, unexported = run(store, work)
    assert dropped == 1  # old-waiting: given up on; old-in-memory is still on its way
    assert left == {"old-in-memory", "new"}
    assert unexported == ["old-in-memory", "new"]


def test_prune_is_durable(store: Opener) -> None:
    async def prune(state: StateStore) -> int:
        await state.commit(Changes(handled=[("old", 1.0), ("new", 100.0)]))
        return await state.prune(50.0)

    assert run(store, prune) == 1
    assert run(store, lambda state: state.handled(["old", "new"])) == {"new"}


def test_export_marks_are_durable(store: Opener) -> None:
    async def mark(state: StateStore) -> None:
        await state.commit(Changes(handled=[("a", 1.0), ("b", 2.0)]))
        await state.mark_exported(["a", "not-handled"])

    run(store, mark)
    assert run(store, lambda state: state.unexported(10)) == ["b"]
