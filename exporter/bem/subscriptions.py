"""bem's webhook setup as `bem-exporter subscribe` needs it: the account's functions, its
subscriptions, creating one, and whether a signing secret exists.

Requests go through `BemClient.get` and `BemClient.post` (limited, paced, retried and reported
like every request); listings are walked with `startingAfter` until a short page. Records decode
one by one: an unreadable one is counted and skipped, its neighbours still arrive. The signing
secret's value is never kept: its answer decodes to whether there is one.

Which subscription types a function gets is decided here, in `OUTPUT_TYPE`: bem-sdk's types
keep bem's older names (`transform` for an extract's output, `route` for a classify's) and
name none after parse, send or render events, whose outputs are taken as `transform`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

import msgspec

from exporter.bem.client import ApiError, BemClient
from exporter.bem.decode import DecodeError

SubscriptionType = Literal[
    "transform",
    "analyze",
    "route",
    "join",
    "split_collection",
    "split_item",
    "evaluation",
    "error",
    "payload_shaping",
    "enrich",
    "collection_processing",
]
ERRORS: Final = "error"

OUTPUT_TYPE: dict[str, SubscriptionType] = {
    "transform": "transform",
    "extract": "transform",
    "parse": "transform",
    "send": "transform",
    "render": "transform",
    "analyze": "analyze",
    "classify": "route",
    "route": "route",
    "split": "split_collection",
    "join": "join",
    "payload_shaping": "payload_shaping",
    "enrich": "enrich",
}
"""Function type -> the subscription type of its output event. A split gets `split_collection`,
one delivery per split, not `split_item`'s one per item: either says a call is under way, and
the items add deliveries, not news. Unknown function types get errors only."""

PAGE_SIZE = 100
MAX_PAGES = 1000
"""A listing longer than this many pages is cut: a cursor that never advances cannot loop."""

SUBSCRIPTIONS = "/v3/subscriptions"
FUNCTIONS = "/v3/functions"
SECRET = "/v3/webhook-secret"

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BemFunction:
    function_id: str
    name: str
    type: str

    def subscription_types(self) -> tuple[SubscriptionType, ...]:
        """Its output's type (if bem has one for it), then errors."""
        output = OUTPUT_TYPE.get(self.type)
        return (ERRORS,) if output is None else (output, ERRORS)


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    name: str
    type: str
    function_id: str | None
    function_name: str | None
    webhook_url: str | None
    disabled: bool


@dataclass(frozen=True, slots=True)
class Listing(Generic[R]):
    records: list[R]
    rejected: int
    """Records that did not decode, skipped."""


class _FunctionRecord(msgspec.Struct):
    functionID: str
    functionName: str
    type: str


class _SubscriptionRecord(msgspec.Struct):
    subscriptionID: str
    name: str
    type: str
    functionID: str | None = None
    functionName: str | None = None
    webhookURL: str | None = None
    disabled: bool | None = None


class _FunctionPage(msgspec.Struct):
    functions: list[msgspec.Raw] | None = None


class _Secret(msgspec.Struct):
    secret: str | None = None


_function = msgspec.json.Decoder(_FunctionRecord)
_subscription = msgspec.json.Decoder(_SubscriptionRecord)
_function_page = msgspec.json.Decoder(_FunctionPage, strict=False)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_secret = msgspec.json.Decoder(_Secret, strict=False)
_encode = msgspec.json.Encoder().encode


def _body(decoder: msgspec.json.Decoder[T], body: bytes, what: str) -> T:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        raise DecodeError(f"{what} is not the expected JSON") from None


def _records(decoder: msgspec.json.Decoder[T], raws: list[msgspec.Raw]) -> tuple[list[T], int]:
    records: list[T] = []
    for raw in raws:
        try:
            records.append(decoder.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            continue
    return records, len(raws) - len(records)


def _function_of(record: _FunctionRecord) -> BemFunction:
    return BemFunction(record.functionID, record.functionName, record.type)


def _subscription_of(record: _SubscriptionRecord) -> Subscription:
    return Subscription(
        record.subscriptionID,
        record.name,
        record.type,
        record.functionID,
        record.functionName,
        record.webhookURL,
        bool(record.disabled),
    )


async def _walk(
    fetch: Callable[[str | None], Awaitable[tuple[list[T], list[str], int]]],
) -> Listing[T]:
    """Every page of a listing: `fetch(cursor)` answers (records, every record's id, rejected)."""
    found: list[T] = []
    rejected = 0
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        records, ids, skipped = await fetch(cursor)
        found.extend(records)
        rejected += skipped
        if len(ids) + skipped < PAGE_SIZE or not ids or ids[-1] == cursor:
            break
        cursor = ids[-1]
    return Listing(found, rejected)


async def list_functions(client: BemClient, workflows: Sequence[str] = ()) -> Listing[BemFunction]:
    """The account's functions; only those the named workflows call, when `workflows` is given."""

    async def fetch(cursor: str | None) -> tuple[list[BemFunction], list[str], int]:
        params = {"limit": str(PAGE_SIZE)}
        if workflows:
            params["workflowNames"] = ",".join(workflows)
        if cursor:
            params["startingAfter"] = cursor
        page = await client.get(FUNCTIONS, FUNCTIONS[1:], params, _decode_functions)
        return page.records, [f.function_id for f in page.records], page.rejected

    return await _walk(fetch)


async def list_subscriptions(client: BemClient) -> Listing[Subscription]:
    """Every subscription of the account, in bem's order."""

    async def fetch(cursor: str | None) -> tuple[list[Subscription], list[str], int]:
        params = {"limit": str(PAGE_SIZE)}
        if cursor:
            params["startingAfter"] = cursor
        page = await client.get(SUBSCRIPTIONS, SUBSCRIPTIONS[1:], params, _decode_subscriptions)
        return page.records, [s.subscription_id for s in page.records], page.rejected

    return await _walk(fetch)


async def create_subscription(
    client: BemClient, name: str, kind: SubscriptionType, function_name: str, url: str
) -> Subscription:
    """`POST /v3/subscriptions` for one function and type, delivering to `url`."""
    body = _encode({"name": name, "type": kind, "functionName": function_name, "webhookURL": url})
    return await client.post(SUBSCRIPTIONS, SUBSCRIPTIONS[1:], body, _decode_created, _create_refused)


async def has_signing_secret(client: BemClient) -> bool:
    """Whether the account has a webhook signing secret (`GET /v3/webhook-secret`: 404 when
    none). Raises ApiError when that cannot be read. The secret itself is dropped on decoding."""
    try:
        return await client.get(SECRET, SECRET[1:], None, _decode_secret_exists)
    except ApiError as error:
        if error.status == 404:
            return False
        raise


def _decode_functions(body: bytes) -> Listing[BemFunction]:
    page = _body(_function_page, body, "the function listing")
    records, rejected = _records(_function, page.functions or [])
    return Listing([_function_of(r) for r in records], rejected)


def _decode_subscriptions(body: bytes) -> Listing[Subscription]:
    records, rejected = _records(_subscription, _body(_raw_list, body, "the subscription listing"))
    return Listing([_subscription_of(r) for r in records], rejected)


def _decode_created(body: bytes) -> Subscription:
    return _subscription_of(_body(_subscription, body, "the created subscription"))


def _decode_secret_exists(body: bytes) -> bool:
    return bool(_body(_secret, body, "the webhook secret").secret)


def _create_refused(status: int) -> str:
    if status in (401, 403):
        return f"HTTP {status}: the API key may not create subscriptions (check BEM_API_KEY)"
    if status == 404:
        return "HTTP 404: bem knows no such function, or no subscriptions endpoint (check BEM_API_URL)"
    return f"HTTP {status}: bem refused the subscription"
