"""One read of bem's function quality metrics, through every page.

bem pages `GET /v3/functions/metrics` by cursor, and the cursor is a `functionID`
(`startingAfter`), but the metrics items carry no `functionID` (bem-sdk's
`FunctionGetMetricsResponse` declares none, and its `get_metrics` returns one page rather than a
paginator). So the reader walks the function listing, which carries the ids and pages by them
exactly as bem-sdk's `FunctionsPage` does, and asks for the metrics of each page's functions by
their ids (`functionIDs`): two requests per page of up to 100 functions, every function read
once, whatever order bem gives the metrics in. With `BEM_WORKFLOWS`, both requests carry
`workflowNames`: only the functions those workflows reference are read.

Both requests go through the API client's public `get`: they share its concurrency limit,
adaptive rate, retries and errors (`ApiError`), and are counted under their own endpoint
templates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from exporter.bem.client import MAX_PAGE_SIZE, BemClient
from exporter.quality.decode import decode_function_page, decode_metrics_page
from exporter.quality.records import FunctionQuality, Reading
from exporter.redact import safe_name

LIST_ENDPOINT = "/v3/functions"
METRICS_ENDPOINT = "/v3/functions/metrics"
ENDPOINTS = (LIST_ENDPOINT, METRICS_ENDPOINT)
MAX_PAGES = 1000
"""A guard against a listing that never ends (100,000 functions at the largest page)."""


FUNCTION_RECORD = "function"
"""The `record` label of an unreadable item of the function listing (rejected-records self-metric)."""
METRICS_RECORD = "function_metrics"
"""The `record` label of an unreadable metrics item."""


def _nothing(_what: str, _count: int) -> None:
    return None


class QualityReader:
    def __init__(
        self,
        client: BemClient,
        workflows: Sequence[str] = (),
        *,
        page_size: int = MAX_PAGE_SIZE,
        rejected: Callable[[str, int], None] = _nothing,
    ) -> None:
        """`rejected(record, n)` is told of the unreadable items of each page (the self-metric)."""
        self._client = client
        self._workflows = ",".join(workflows)
        self._page_size = page_size
        self._rejected = rejected

    async def read(self) -> Reading:
        """Every function's quality; raises `ApiError` if any page cannot be read (nothing of
        a partial read is kept: a function missing from it would look deleted)."""
        functions: dict[str, FunctionQuality] = {}
        rejected = pages = 0
        cursor: str | None = None
        while pages < MAX_PAGES:
            listing = await self._client.get(LIST_ENDPOINT, "v3/functions", self._params(cursor), decode_function_page)
            pages += 1
            if listing.rejected:
                self._rejected(FUNCTION_RECORD, listing.rejected)
            rejected += listing.rejected + await self._metrics(listing.ids, functions)
            if listing.size < self._page_size or not listing.ids or listing.ids[-1] == cursor:
                break
            cursor = listing.ids[-1]
        return Reading(functions, rejected, pages)

    async def _metrics(self, ids: list[str], into: dict[str, FunctionQuality]) -> int:
        """Read the metrics of `ids` into `into` (the first item of a name wins); the number
        of unreadable items, also reported."""
        if not ids:
            return 0
        params = {"functionIDs": ",".join(ids), "limit": str(len(ids)), **self._filter()}
        page = await self._client.get(METRICS_ENDPOINT, "v3/functions/metrics", params, decode_metrics_page)
        for function in page.functions:
            into.setdefault(safe_name(function.function_name), function)
        if page.rejected:
            self._rejected(METRICS_RECORD, page.rejected)
        return page.rejected

    def _params(self, cursor: str | None) -> dict[str, str]:
        params = {"limit": str(self._page_size), "sortOrder": "asc", **self._filter()}
        if cursor is not None:
            params["startingAfter"] = cursor
        return params

    def _filter(self) -> dict[str, str]:
        return {"workflowNames": self._workflows} if self._workflows else {}
