"""The account's subscriptions (`/v3/subscriptions`), validated as bem does; no HTTP here.

A subscription names one function (by `functionName` or `functionID`) and a `type`, and
delivers the function's events of that type to its `webhookURL`. The types are bem-sdk's
(`SubscriptionV3.type`); they keep bem's older names for the events that were renamed since
(`transform` for extract, `route` for classify), and none is named after parse, send or render
events. The simulator takes `transform` as the type of a function's output whatever its newer
name: `EVENTS_OF` is that choice, in one place. Collections, S3 and Google Drive targets are
stored and shown, never delivered to.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .catalog import FUNCTIONS_BY_ID, FUNCTIONS_BY_NAME, Function, random_id
from .create import BadRequestError

SUBSCRIPTION_TYPES = (
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
)
"""bem-sdk's `SubscriptionCreateParams.type`."""

EVENTS_OF: dict[str, frozenset[str]] = {
    "transform": frozenset({"transform", "extract", "parse", "send", "render"}),
    "route": frozenset({"route", "classify"}),
    **{name: frozenset({name}) for name in SUBSCRIPTION_TYPES if name not in ("transform", "route")},
}
"""The event types (`eventType`) a subscription of each type delivers."""

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
_TEXT_FIELDS = ("name", "s3Bucket", "s3FilePath", "googleDriveFolderID")


class NotFoundError(LookupError):
    """A subscription, function or collection that does not exist (answered 404)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    name: str
    type: str
    function: Function | None = None
    collection: str | None = None
    webhook_url: str | None = None
    disabled: bool = False
    created_ms: int = 0
    """When it was created (simulator clock): it delivers the events created from then on."""
    stored: Mapping[str, str] = field(default_factory=dict)
    """S3 and Google Drive targets: kept and shown as given."""

    def doc(self) -> dict[str, Any]:
        """As bem-sdk's `SubscriptionV3`."""
        doc: dict[str, Any] = {"subscriptionID": self.subscription_id, "name": self.name, "type": self.type}
        if self.function is not None:
            doc["functionID"] = self.function.id
            doc["functionName"] = self.function.name
        if self.collection is not None:
            doc["collectionName"] = self.collection
        if self.webhook_url is not None:
            doc["webhookURL"] = self.webhook_url
        doc["disabled"] = self.disabled
        doc.update(self.stored)
        return doc

    def delivers(self, function_id: str, event_type: str, created_ms: int) -> bool:
        """Whether an event of this function and type, created then, is delivered to it."""
        return (
            not self.disabled
            and self.webhook_url is not None
            and self.created_ms <= created_ms
            and self.function is not None
            and self.function.id == function_id
            and event_type in EVENTS_OF[self.type]
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where a delivery goes: the subscription and its URL."""

    subscription_id: str
    url: str


class Subscriptions:
    """The account's subscriptions in creation order; thread-safe (HTTP thread, tests)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"bem-simulator/subscriptions/{seed}")
        self._lock = threading.Lock()
        self._by_id: dict[str, Subscription] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def create(self, body: Mapping[str, Any], now_ms: int) -> Subscription:
        """A new subscription from a `POST /v3/subscriptions` body, created at `now_ms`;
        BadRequestError or NotFoundError."""
        for required in ("name", "type"):
            if required not in body:
                raise BadRequestError(f"{required} is required", required)
        function, collection = _target(body)
        draft = replace(_changed(Subscription("", "", "transform"), body), function=function, collection=collection)
        with self._lock:
            subscription = replace(draft, subscription_id=random_id(self._rng, "sub_"), created_ms=now_ms)
            self._by_id[subscription.subscription_id] = subscription
            return subscription

    def get(self, subscription_id: str) -> Subscription:
        with self._lock:
            return self._found(subscription_id)

    def update(self, subscription_id: str, body: Mapping[str, Any]) -> Subscription:
        """PATCH: only the fields given change (`functionName` among them)."""
        with self._lock:
            subscription = _changed(self._found(subscription_id), body)
            if "functionName" in body:
                subscription = replace(subscription, function=_function(body["functionName"], None), collection=None)
            self._by_id[subscription_id] = subscription
            return subscription

    def delete(self, subscription_id: str) -> None:
        with self._lock:
            self._found(subscription_id)
            del self._by_id[subscription_id]

    def page(
        self,
        limit: int = DEFAULT_LIMIT,
        starting_after: str | None = None,
        ending_before: str | None = None,
        function_names: frozenset[str] | None = None,
    ) -> list[Subscription]:
        """One page in creation order, after (or before) a cursor subscription."""
        with self._lock:
            ordered = list(self._by_id.values())
            if starting_after is not None:
                ordered = ordered[ordered.index(self._found(starting_after)) + 1 :]
            elif ending_before is not None:
                ordered = ordered[: ordered.index(self._found(ending_before))]
            chosen = [s for s in ordered if _named(s, function_names)]
            return chosen[-limit:] if ending_before is not None else chosen[:limit]

    def targets(self, function_id: str, event_type: str, created_ms: int) -> list[Target]:
        """Where an event of this function and type, created at `created_ms`, goes."""
        with self._lock:
            return [
                Target(s.subscription_id, s.webhook_url)
                for s in self._by_id.values()
                if s.webhook_url is not None and s.delivers(function_id, event_type, created_ms)
            ]

    def webhooks_since(self) -> int | None:
        """When the oldest subscription that delivers to a URL was created; None when none
        does (then nothing need be scheduled)."""
        with self._lock:
            times = [s.created_ms for s in self._by_id.values() if s.webhook_url is not None and not s.disabled]
            return min(times, default=None)

    def _found(self, subscription_id: str) -> Subscription:
        subscription = self._by_id.get(subscription_id)
        if subscription is None:
            raise NotFoundError(f"subscription {subscription_id!r} not found")
        return subscription


def _named(subscription: Subscription, names: frozenset[str] | None) -> bool:
    return names is None or (subscription.function is not None and subscription.function.name in names)


def _changed(subscription: Subscription, body: Mapping[str, Any]) -> Subscription:
    """`subscription` with the plain fields of a create or update body applied, validated."""
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _text(body, "name")
    if "type" in body:
        if body["type"] not in SUBSCRIPTION_TYPES:
            raise BadRequestError(f"type must be one of {', '.join(SUBSCRIPTION_TYPES)}", "type")
        changes["type"] = body["type"]
    if "webhookURL" in body:
        changes["webhook_url"] = _webhook_url(body["webhookURL"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise BadRequestError("disabled must be a boolean", "disabled")
        changes["disabled"] = body["disabled"]
    stored = {name: _text(body, name) for name in _TEXT_FIELDS[1:] if name in body}
    if stored:
        changes["stored"] = {**subscription.stored, **stored}
    return replace(subscription, **changes)


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value.strip():
        raise BadRequestError(f"{name} must be a non-empty string", name)
    return value


def _webhook_url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestError("webhookURL must be an http or https URL", "webhookURL")
    return str(value)


def _target(body: Mapping[str, Any]) -> tuple[Function | None, str | None]:
    """The function (or collection) a new subscription listens to."""
    if "functionName" in body or "functionID" in body:
        return _function(body.get("functionName"), body.get("functionID")), None
    if "collectionName" in body or "collectionID" in body:
        name = body.get("collectionName") or body.get("collectionID")
        raise NotFoundError(f"collection {name!r} not found")  # the simulated account has none
    raise BadRequestError("functionName, functionID, collectionName or collectionID is required", "functionName")


def _function(name: Any, function_id: Any) -> Function:
    found = FUNCTIONS_BY_NAME.get(name) if isinstance(name, str) else None
    if found is None and isinstance(function_id, str):
        found = FUNCTIONS_BY_ID.get(function_id)
    if found is None:
        raise NotFoundError(f"function {name or function_id!r} not found")
    return found
