"""The PostgreSQL state engine and its leader lease, against a real PostgreSQL server.

Engine: the same behaviour as the SQLite engine (cursor, tracked calls, handled marks,
snapshots, undelivered spans, retention), versioned schema. Lease: one holder at a time,
timed by the database, an epoch per takeover, and every write fenced by it. Faults: the
database stopped and started again, a wrong password, a missing database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
from postgres_server import PostgresServer

from exporter.state.postgres import PostgresStore
from exporter.state.postgres_connect import Timeouts, connection_kwargs, parse_target
from exporter.state.postgres_schema import SCHEMA_VERSION
from exporter.state.store import Backfill, Changes, FencedError, StateError, StateWriteError, Stored

ROOT = Path(__file__).resolve().parent.parent
Scenario = Callable[[], Awaitable[None]]


def run(scenario: Scenario) -> None:
    asyncio.run(scenario())


async def leader(url: str, duration: float = 15.0, holder: str | None = None) -> PostgresStore:
    """A store whose replica holds the lease."""
    store = await PostgresStore.open(url, lease_duration=duration, holder=holder)
    assert await store.lease.acquire() is not None
    return store


# -- the engine ------------------------------------------------------------------------------


def test_a_commit_is_loaded_back_whole(postgres_url: str) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url)
        await store.commit(
            Changes(
                handled=[("a", 1.0), ("b", 2.0), ("a", 1.0)],
                tracked=[("p", 3.0), ("q", 4.0), ("p", 5.0)],
                cursor=["c1", "c2"],
                backfill=Backfill(until=100.0, after="z"),
                snapshots={"calls": b"\x00snap\xff", "functions": b""},
            )
        )
        await store.commit(Changes(untracked=["q"], backfill_done=True, snapshots={"calls": b"v2"}))
        assert await store.load() == Stored(
            cursor=["c1", "c2"], tracked={"p": 5.0}, backfill=None, snapshots={"calls": b"v2", "functions": b""}
        )
        assert await store.handled(["a", "b", "x"]) == {"a", "b"}
        await store.close()

    run(scenario)


def test_an_empty_database_loads_as_a_first_start(postgres_url: str) -> None:
    async def scenario() -> None:
        store = await PostgresStore.open(postgres_url)
        assert await store.load() == Stored()
        assert await store.handled(["a"]) == set()
        assert await store.count_unexported() == 0
        await store.close()

    run(scenario)


def test_undelivered_spans_oldest_first_skipping_those_on_their_way(postgres_url: str) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url)
        await store.commit(Changes(handled=[("late", 30.0), ("early", 10.0), ("mid", 20.0), ("done", 5.0)]))
        await store.mark_exported(["done"])
        assert await store.count_unexported() == 3
        assert await store.unexported(10) == ["early", "mid", "late"]
        assert await store.unexported(1, skip=["early"]) == ["mid"]
        await store.close()

    run(scenario)


def test_prune_forgets_old_marks_and_counts_undelivered_ones_it_gave_up(postgres_url: str) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url)
        await store.commit(Changes(handled=[("old-sent", 1.0), ("old-waiting", 2.0), ("old-kept", 3.0), ("new", 50.0)]))
        await store.mark_exported(["old-sent"])
        assert await store.prune(created_before=10.0, keep=["old-kept"]) == 1
        assert await store.handled(["old-sent", "old-waiting", "old-kept", "new"]) == {"old-kept", "new"}
        await store.close()

    run(scenario)


def test_a_standby_reads_what_the_leader_committed(postgres_url: str) -> None:
    async def scenario() -> None:
        first = await leader(postgres_url)
        standby = await PostgresStore.open(postgres_url)
        await first.commit(Changes(handled=[("a", 1.0)], cursor=["a"], snapshots={"calls": b"1"}))
        assert (await standby.load()).snapshots == {"calls": b"1"}
        assert await standby.handled(["a"]) == {"a"}
        await first.close()
        await standby.close()

    run(scenario)


# -- schema versions -------------------------------------------------------------------------


def test_the_schema_version_is_recorded_and_reopening_keeps_the_data(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url)
        await store.commit(Changes(handled=[("a", 1.0)]))
        await store.close()
        again = await PostgresStore.open(postgres_url)
        assert await again.handled(["a"]) == {"a"}
        await again.close()

    run(scenario)
    database = postgres_url.rsplit("/", 1)[1]
    assert postgres_server.execute("SELECT version FROM bem_schema", database) == [(SCHEMA_VERSION,)]


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    async def scenario() -> None:
        stores = await asyncio.gather(*(PostgresStore.open(postgres_url) for _ in range(4)))
        for store in stores:
            assert await store.load() == Stored()
            await store.close()

    run(scenario)


def test_a_database_written_by_a_newer_version_is_refused_untouched(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        await (await PostgresStore.open(postgres_url)).close()
        database = postgres_url.rsplit("/", 1)[1]
        postgres_server.execute(f"UPDATE bem_schema SET version = {SCHEMA_VERSION + 1}", database)
        with pytest.raises(StateError) as refused:
            await PostgresStore.open(postgres_url)
        message = str(refused.value)
        assert message.startswith("BEM_STATE_URL:")
        assert f"schema version {SCHEMA_VERSION + 1}" in message
        assert postgres_server.password not in message
        assert postgres_server.execute("SELECT version FROM bem_schema", database) == [(SCHEMA_VERSION + 1,)]

    run(scenario)


# -- the lease and fencing -------------------------------------------------------------------


def test_only_one_of_racing_replicas_gets_the_lease(postgres_url: str) -> None:
    async def scenario() -> None:
        stores = [await PostgresStore.open(postgres_url, holder=f"replica-{n}") for n in range(5)]
        for _ in range(3):
            epochs = await asyncio.gather(*(store.lease.acquire() for store in stores))
            winners = [store for store, epoch in zip(stores, epochs, strict=True) if epoch is not None]
            assert len(winners) == 1
            status = await stores[0].lease.status()
            assert status is not None and status.holder == winners[0].lease.holder and status.held
            await winners[0].lease.release()
        # Three takeovers, three epochs.
        assert status.epoch == 3
        for store in stores:
            await store.close()

    run(scenario)


def test_a_holder_that_stops_renewing_loses_the_lease_after_it_runs_out(postgres_url: str) -> None:
    async def scenario() -> None:
        old = await leader(postgres_url, duration=1.0, holder="old")
        standby = await PostgresStore.open(postgres_url, lease_duration=1.0, holder="new")
        assert await standby.lease.acquire() is None  # held: not yet
        epoch = await asyncio.wait_for(standby.lease.campaign(interval=0.1), timeout=10)
        assert epoch == 2
        assert not await old.lease.renew()
        with pytest.raises(FencedError):
            await old.commit(Changes(handled=[("twice", 1.0)]))
        assert await standby.handled(["twice"]) == set()
        await old.close()
        await standby.close()

    run(scenario)


def test_a_write_is_refused_when_the_database_says_the_lease_moved_on(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The database decides, not the replica's own idea of its deadline: here the replica
    still believes it holds the lease (its deadline has not passed) but the row moved on."""
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        store = await leader(postgres_url, duration=60.0, holder="me")
        await store.commit(Changes(handled=[("before", 1.0)]))
        postgres_server.execute("UPDATE bem_lease SET holder = 'other', epoch = epoch + 1", database)
        for write in (
            store.commit(Changes(handled=[("after", 2.0)], cursor=["after"])),
            store.mark_exported(["before"]),
            store.prune(created_before=100.0),
        ):
            with pytest.raises(FencedError) as fenced:
                await write
            assert fenced.value.kind == "fenced"
        assert await store.handled(["before", "after"]) == {"before"}
        assert await store.count_unexported() == 1
        assert store.lease.epoch is None
        # The renewal loop learns why from the refused write, and steps down with that reason.
        assert await asyncio.wait_for(store.lease.keep(), timeout=store.lease.renew_interval + 10) == (
            "leader lease (epoch 1) lost: taken over by other (epoch 2)"
        )
        await store.close()

    run(scenario)


def test_a_write_is_refused_once_the_lease_expired_by_the_database_clock(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        store = await leader(postgres_url, duration=60.0)
        postgres_server.execute("UPDATE bem_lease SET expires_at = now() - interval '1 second'", database)
        with pytest.raises(FencedError, match="expired"):
            await store.commit(Changes(handled=[("late", 1.0)]))
        assert await store.handled(["late"]) == set()
        await store.close()

    run(scenario)


def test_a_standby_cannot_write(postgres_url: str) -> None:
    async def scenario() -> None:
        standby = await PostgresStore.open(postgres_url)
        with pytest.raises(FencedError):
            await standby.commit(Changes(handled=[("a", 1.0)]))
        assert await standby.handled(["a"]) == set()
        await standby.close()

    run(scenario)


def test_keep_steps_down_when_the_lease_is_taken(postgres_server: PostgresServer, postgres_url: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        store = await leader(postgres_url, duration=1.5, holder="me")
        keeping = asyncio.create_task(store.lease.keep())
        await asyncio.sleep(2.0)  # renewed past its first lease
        assert not keeping.done()
        postgres_server.execute("UPDATE bem_lease SET holder = 'usurper', epoch = epoch + 1", database)
        reason = await asyncio.wait_for(keeping, timeout=10)
        assert "taken over by usurper" in reason
        assert store.lease.epoch is None
        await store.close()

    run(scenario)


def test_a_leader_that_cannot_renew_steps_down_when_its_lease_would_run_out(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url, duration=3.0, holder="me")
        keeping = asyncio.create_task(store.lease.keep())
        postgres_server.stop()
        try:
            reason = await asyncio.wait_for(keeping, timeout=30)
        finally:
            postgres_server.start()
        assert reason.startswith("leader lease ran out before it could be renewed")
        assert postgres_server.password not in reason
        assert store.lease.epoch is None
        with pytest.raises(FencedError):
            await store.commit(Changes(handled=[("a", 1.0)]))
        await store.close()

    run(scenario)


def test_a_leader_keeps_its_lease_through_an_outage_shorter_than_the_lease(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    def expiry() -> object:
        return postgres_server.execute("SELECT expires_at FROM bem_lease", database)[0][0]

    async def scenario() -> None:
        store = await leader(postgres_url, duration=12.0, holder="me")
        first_expiry = expiry()
        keeping = asyncio.create_task(store.lease.keep())
        postgres_server.stop()
        try:
            await asyncio.sleep(1.0)
        finally:
            postgres_server.start()
        await asyncio.sleep(store.lease.renew_interval + 2.0)  # a renewal after the outage
        assert not keeping.done()
        status = await store.lease.status()
        assert status is not None and status.holder == "me" and status.epoch == 1
        assert expiry() > first_expiry  # type: ignore[operator]
        await store.commit(Changes(handled=[("a", 1.0)]))
        keeping.cancel()
        await store.close()

    run(scenario)


def test_a_clean_stop_hands_the_lease_over_without_waiting_for_it_to_run_out(postgres_url: str) -> None:
    async def scenario() -> None:
        first = await leader(postgres_url, duration=600.0)
        standby = await PostgresStore.open(postgres_url, lease_duration=600.0)
        await first.close()
        assert await standby.lease.acquire() == 2
        await standby.close()

    run(scenario)


def test_a_leader_stalled_inside_a_commit_does_not_block_the_takeover(postgres_url: str) -> None:
    """A leader paused in the middle of a commit holds the lease row's lock: its session is
    ended by the server once idle in that transaction for longer than the lease, and the
    standby's takeover goes through instead of waiting on the lock for ever."""

    async def scenario() -> None:
        stalled = await leader(postgres_url, duration=2.0, holder="stalled")
        target = parse_target(postgres_url)
        connection = await psycopg.AsyncConnection.connect(
            postgres_url, **connection_kwargs(target, Timeouts(stalled.lease.duration))
        )
        await stalled.lease.verify(connection)  # the commit's first step: the row is locked now
        standby = await PostgresStore.open(postgres_url, lease_duration=2.0, holder="standby")
        assert await asyncio.wait_for(standby.lease.campaign(interval=0.2), timeout=30) == 2
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            await connection.execute("SELECT 1")  # the stalled session was ended
        await connection.close()
        await standby.close()
        await stalled.close()

    run(scenario)


_PAUSED_LEADER = textwrap.dedent(
    """
    import asyncio, sys
    from exporter.state.postgres import PostgresStore
    from exporter.state.store import Changes, FencedError

    async def main() -> None:
        store = await PostgresStore.open(sys.argv[1], lease_duration=1.0, holder="paused")
        assert await store.lease.acquire() is not None
        print("leading", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        try:
            await store.commit(Changes(handled=[("from-the-paused-one", 1.0)]))
            print("committed", flush=True)
        except FencedError as error:
            print("fenced", error, flush=True)
        await store.close()

    asyncio.run(main())
    """
)


def test_a_paused_leader_whose_lease_was_taken_cannot_commit(postgres_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_LEADER, postgres_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "leading"
        os.kill(child.pid, signal.SIGSTOP)

        async def take_over() -> None:
            successor = await PostgresStore.open(postgres_url, lease_duration=1.0, holder="successor")
            await asyncio.wait_for(successor.lease.campaign(interval=0.1), timeout=15)
            await successor.commit(Changes(handled=[("from-the-successor", 2.0)]))
            await successor.close()

        run(take_over)
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("commit now\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith("fenced")
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()

    async def check() -> None:
        reader = await PostgresStore.open(postgres_url)
        assert await reader.handled(["from-the-paused-one", "from-the-successor"]) == {"from-the-successor"}
        await reader.close()

    run(check)


# -- the database in trouble -----------------------------------------------------------------


def test_operations_fail_as_unavailable_while_the_database_is_down_and_work_after(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        store = await leader(postgres_url, duration=6.0)
        await store.commit(Changes(handled=[("before", 1.0)]))
        postgres_server.stop()
        try:
            for operation in (
                lambda: store.commit(Changes(handled=[("during", 2.0)])),
                lambda: store.load(),
                lambda: store.handled(["before"]),
                lambda: store.mark_exported(["before"]),
            ):
                with pytest.raises(StateWriteError) as failed:
                    await operation()
                assert failed.value.kind == "unavailable"
                assert postgres_server.password not in str(failed.value)
        finally:
            postgres_server.start()
        # The outage outlasted the lease: the replica steps down and campaigns again.
        assert not await store.lease.renew()
        assert await store.lease.acquire() == 2
        await store.commit(Changes(handled=[("after", 3.0)]))
        assert await store.handled(["before", "during", "after"]) == {"before", "after"}
        await store.close()

    run(scenario)


def test_a_wrong_password_is_one_line_without_the_password(postgres_server: PostgresServer, postgres_url: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    wrong = "not-the-password-" + postgres_server.password[::-1]

    async def scenario() -> None:
        with pytest.raises(StateError) as refused:
            await PostgresStore.open(postgres_server.url(database, password=wrong))
        message = str(refused.value)
        assert message.startswith("BEM_STATE_URL:") and "\n" not in message
        assert "password authentication failed" in message
        assert wrong not in message and postgres_server.password not in message

    run(scenario)


def test_a_missing_database_is_one_line_without_the_password(postgres_server: PostgresServer) -> None:
    async def scenario() -> None:
        with pytest.raises(StateError) as refused:
            await PostgresStore.open(postgres_server.url("no_such_database"))
        message = str(refused.value)
        assert message.startswith("BEM_STATE_URL:") and "\n" not in message
        assert "no_such_database" in message and "does not exist" in message
        assert postgres_server.password not in message

    run(scenario)


@pytest.mark.parametrize(
    "url", ["mysql://bem:hunter2secret@db/state", "postgresql://bem:hunter2secret@db:notaport/state"]
)
def test_an_unusable_url_is_one_line_without_the_password(url: str) -> None:
    async def scenario() -> None:
        with pytest.raises(StateError) as refused:
            await PostgresStore.open(url)
        message = str(refused.value)
        assert message.startswith("BEM_STATE_URL:") and "\n" not in message
        assert "hunter2secret" not in message

    run(scenario)


def test_the_password_may_come_from_pgpassword(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)

    async def scenario() -> None:
        store = await PostgresStore.open(postgres_server.url(database, password=""))
        assert await store.load() == Stored()
        await store.close()

    run(scenario)


def test_after_a_commit_broken_during_commit_the_state_is_loaded_again_before_the_next(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A COMMIT that fails may have been applied: the store refuses to write on top of a
    batch its caller discarded until the caller has loaded the state again."""
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        store = await leader(postgres_url)
        # A deferred trigger runs at COMMIT: this one ends its own session there.
        for sql in (
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$",
            "CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON bem_snapshots DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW WHEN (NEW.name = 'boom') EXECUTE FUNCTION die()",
        ):
            postgres_server.execute(sql, database)
        with pytest.raises(StateWriteError) as broken:
            await store.commit(Changes(handled=[("doubtful", 1.0)], snapshots={"boom": b"1"}))
        assert broken.value.kind == "unavailable"
        with pytest.raises(StateWriteError, match="loaded again"):
            await store.commit(Changes(handled=[("next", 2.0)]))
        stored = await store.load()
        assert "boom" not in stored.snapshots
        await store.commit(Changes(handled=[("next", 2.0)]))
        assert await store.handled(["doubtful", "next"]) == {"next"}
        await store.close()

    run(scenario)


def test_a_database_that_is_down_at_start_is_unavailable_not_a_settings_error(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    async def scenario() -> None:
        postgres_server.stop()
        try:
            with pytest.raises(StateWriteError) as down:
                await PostgresStore.open(postgres_url, lease_duration=3.0)
        finally:
            postgres_server.start()
        assert down.value.kind == "unavailable" and not isinstance(down.value, StateError)
        assert postgres_server.password not in str(down.value)
        store = await PostgresStore.open(postgres_url, lease_duration=3.0)
        assert await store.load() == Stored()
        await store.close()

    run(scenario)
