"""Running the canary inside the exporter: its call created through the API client, its own
commits through the state store, its view on /status, only on the leader.

`CanaryDriver.tick()` is awaited by the poll cycle's own task, right after the cycle's poll
(`Exporter.cycle`). A canary stage (submission, creation, timeout, submit error) and a batch
stage are therefore sequenced in one task and never interleave, without a lock shared with the
poll loop; the poll goes first, so a call that finished is judged `success` or `failure` before
its timeout can be. A create request that retries delays that cycle's end by its retries, no
more than any slow API request does.

Only the leader creates canary calls: `is_leader` (True without HA) is asked before each tick.
A standby neither creates nor times out a call; when it takes over, the poll loop's reload
restores the canary's snapshot with the other recorders, and it carries on where the old
leader stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from exporter.bem.client import BemClient
from exporter.bem.create import CreateRequest, input_type_of
from exporter.canary.judge import Canary
from exporter.config import CanarySettings
from exporter.health import HealthLog
from exporter.state.store import Changes, StateError, StateStore, StateWriteError
from exporter.status import CanarySummary, StatusBoard

log = logging.getLogger(__name__)

RECORDER = "canary"
"""The canary's name among the poll loop's recorders, and the key of its snapshot in the state."""


def always_leader() -> bool:
    """Without HA this process is the only writer, so it is the leader."""
    return True


def canary_of(settings: CanarySettings) -> Canary | None:
    """The canary these settings ask for, or None."""
    if settings.workflow is None:
        return None
    return Canary(settings.workflow, settings.interval, settings.timeout)


class CanaryDriver:
    """Ticks one canary: creates its calls over `client`, commits its state to `store`."""

    def __init__(
        self,
        canary: Canary,
        settings: CanarySettings,
        client: BemClient,
        store: StateStore,
        *,
        board: StatusBoard | None = None,
        is_leader: Callable[[], bool] = always_leader,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.canary = canary
        self._client = client
        self._store = store
        self._board = board
        self._is_leader = is_leader
        self._clock = clock
        self._state = HealthLog(log, "canary state write")
        self._document = settings.document
        self._input_type = input_type_of(settings.file or "") or ""  # the settings checked it names one

    async def tick(self) -> None:
        """One canary step, when this process is the leader; then /status shows the canary."""
        if self._is_leader():
            try:
                await self.canary.tick(self._clock, self._create, self._commit)
            except (StateError, StateWriteError) as failure:
                # Nothing advanced: the same step is taken again next cycle.
                self._state.failing(str(failure), level=logging.ERROR)
            else:
                self._state.ok()
        self.show()

    def show(self) -> None:
        """Put the canary's published state on /status."""
        if self._board is None:
            return
        view = self.canary.view()
        summary = CanarySummary(
            view.workflow_name, view.last_result, view.last_duration, view.last_success_at, view.in_flight is not None
        )
        self._board.set_canary(summary)

    async def _create(self, reference_id: str) -> str:
        request = CreateRequest(self.canary.workflow_name, reference_id, self._document, self._input_type)
        return (await self._client.create_call(request)).call_id

    async def _commit(self, snapshot: bytes) -> None:
        await self._store.commit(Changes(snapshots={RECORDER: snapshot}))
