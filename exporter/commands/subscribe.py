"""`bem-exporter subscribe --url URL [--apply]`: the webhook subscriptions the exporter needs.

It lists the account's functions (those of `BEM_WORKFLOWS` when set) and subscriptions, and
prints the subscriptions it would create: for each function, one for its output's event type
and one for its errors (`BemFunction.subscription_types`). A wanted subscription is already
there when any subscription, whoever made it, delivers that type of that function to that
URL. `--apply` creates the missing ones, named `bem-exporter <type> <function>`, then lists
again to confirm; it never changes or deletes a subscription, so running it twice creates
each one once. It says how to give the exporter the signing secret, which it never prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from exporter.app import bem_client
from exporter.bem.client import ApiError, BemClient
from exporter.bem.errors import describe
from exporter.bem.subscriptions import (
    BemFunction,
    Subscription,
    SubscriptionType,
    create_subscription,
    has_signing_secret,
    list_functions,
    list_subscriptions,
)
from exporter.config import Settings, SettingsError
from exporter.redact import safe_name, safe_url

NAME_PREFIX = "bem-exporter"
LISTENER_PATH = "/webhook"
"""What the exporter's webhook listener answers (`BEM_WEBHOOK_LISTEN`)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    function: BemFunction
    type: SubscriptionType

    @property
    def name(self) -> str:
        """The name that marks it as made by bem-exporter."""
        return f"{NAME_PREFIX} {self.type} {self.function.name}"

    def delivered_by(self, subscription: Subscription, url: str) -> bool:
        same_function = subscription.function_id == self.function.function_id or (
            subscription.function_id is None and subscription.function_name == self.function.name
        )
        return same_function and subscription.type == self.type and subscription.webhook_url == url


@dataclass(frozen=True, slots=True)
class Plan:
    missing: list[Wanted]
    present: list[tuple[Wanted, Subscription]]
    ours_elsewhere: list[Subscription]
    """Subscriptions bem-exporter made that deliver to another URL: left as they are."""


def made_by_exporter(subscription: Subscription) -> bool:
    return subscription.name.startswith(NAME_PREFIX + " ")


def plan(functions: list[BemFunction], subscriptions: list[Subscription], url: str) -> Plan:
    """What to create so that every function's types are delivered to `url`."""
    missing: list[Wanted] = []
    present: list[tuple[Wanted, Subscription]] = []
    for function in sorted(functions, key=lambda f: f.name):
        for kind in function.subscription_types():
            wanted = Wanted(function, kind)
            found = next((s for s in subscriptions if wanted.delivered_by(s, url)), None)
            if found is None:
                missing.append(wanted)
            else:
                present.append((wanted, found))
    elsewhere = [s for s in subscriptions if made_by_exporter(s) and s.webhook_url != url]
    return Plan(missing, present, elsewhere)


def webhook_url(raw: str) -> str:
    """The `--url` given, checked (kept as given: it is compared with the subscriptions' URLs)."""
    url = raw.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise SettingsError("--url: not a valid URL (check its port and any [IPv6] brackets)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError("--url: not an http(s) URL with a host (example: https://bem-exporter.example.com/webhook)")
    return url


def url_warnings(url: str) -> list[str]:
    """What may keep deliveries to `url` from reaching the exporter's listener."""
    parts = urlsplit(url)
    warnings: list[str] = []
    if not parts.path.rstrip("/").endswith(LISTENER_PATH):
        warnings.append(f"the exporter's listener answers POST {LISTENER_PATH}: this URL needs a proxy that maps it")
    if parts.scheme != "https":
        warnings.append("bem delivers to HTTPS endpoints: use an https URL outside tests")
    return warnings


async def subscribe(settings: Settings, url: str, apply: bool) -> int:
    """Print the plan; create what is missing with `apply`. 0 when every wanted subscription
    is there (or, without `apply`, when the plan could be made)."""
    async with bem_client(settings.api) as client:
        try:
            functions = await list_functions(client, settings.api.workflows)
            subscriptions = await list_subscriptions(client)
        except ApiError as error:
            return _failed(f"could not read the account: {describe(error)}")
        _intro(url, settings.api.workflows, functions.records, subscriptions.records)
        _skipped(functions.rejected, "function")
        _skipped(subscriptions.rejected, "subscription")
        if not functions.records:
            return _failed("no functions to subscribe to" + _of_workflows(settings.api.workflows))
        the_plan = plan(functions.records, subscriptions.records, url)
        _show(the_plan)
        await _secret_advice(client)
        if not apply:
            verb = f"create the {len(the_plan.missing)} missing" if the_plan.missing else "check them again"
            print(f"dry run: nothing changed; run again with --apply to {verb}")
            return 0
        return await _apply(client, the_plan, url)


def _of_workflows(workflows: tuple[str, ...]) -> str:
    return f" (BEM_WORKFLOWS: {', '.join(safe_name(w) for w in workflows)})" if workflows else ""


def _intro(url: str, workflows: tuple[str, ...], functions: list[BemFunction], existing: list[Subscription]) -> None:
    print(f"webhooks to {safe_url(url)}")
    for warning in url_warnings(url):
        print(f"  warning: {warning}")
    ours = sum(made_by_exporter(s) for s in existing)
    print(f"functions: {len(functions)}{_of_workflows(workflows) or ' (all workflows and direct calls)'}")
    print(f"subscriptions in the account: {len(existing)}, {ours} made by bem-exporter")


def _skipped(count: int, what: str) -> None:
    if count:
        print(f"  warning: {count} unreadable {what} record(s) skipped")


def _row(wanted: Wanted, note: str = "") -> str:
    return f"  {wanted.type:<16} {safe_name(wanted.function.name):<40} {note}".rstrip()


def _show(the_plan: Plan) -> None:
    print(f"to create ({len(the_plan.missing)}):")
    for wanted in the_plan.missing:
        print(_row(wanted, f"({safe_name(wanted.function.type)} function)"))
    print(f"already delivered to this URL ({len(the_plan.present)}):")
    for wanted, found in the_plan.present:
        who = "bem-exporter" if made_by_exporter(found) else "someone else"
        disabled = ", DISABLED: nothing is delivered" if found.disabled else ""
        print(_row(wanted, f"{safe_name(found.subscription_id)} (made by {who}{disabled})"))
    if the_plan.ours_elsewhere:
        print(f"made by bem-exporter for another URL, left as they are ({len(the_plan.ours_elsewhere)}):")
        for found in the_plan.ours_elsewhere:
            where = safe_url(found.webhook_url or "")
            print(f"  {safe_name(found.subscription_id)} {safe_name(found.name)} -> {where}")


async def _secret_advice(client: BemClient) -> None:
    where = "give it to the exporter as BEM_WEBHOOK_SECRET or BEM_WEBHOOK_SECRET_FILE"
    try:
        exists = await has_signing_secret(client)
    except ApiError as error:
        print(f"signing secret: could not tell whether the account has one ({describe(error)})")
        print(f"  bem signs deliveries with the account's secret (GET /v3/webhook-secret): {where}")
        return
    if exists:
        print("signing secret: the account has one, and bem signs every delivery with it;")
        print(f"  read it with GET /v3/webhook-secret (not shown here) and {where}")
    else:
        print("signing secret: the account has none, so deliveries come unsigned and the exporter refuses them;")
        print(f"  generate one with POST /v3/webhook-secret (shown once) and {where}")


async def _apply(client: BemClient, the_plan: Plan, url: str) -> int:
    if the_plan.missing:
        print(f"creating ({len(the_plan.missing)}):")
    failed = 0
    for wanted in the_plan.missing:
        try:
            made = await create_subscription(client, wanted.name, wanted.type, wanted.function.name, url)
        except ApiError as error:
            failed += 1
            print(_row(wanted, f"FAILED: {describe(error)}"))
            continue
        print(_row(wanted, f"created {safe_name(made.subscription_id)}"))
    return await _confirm(client, the_plan, url, failed)


async def _confirm(client: BemClient, the_plan: Plan, url: str, failed: int) -> int:
    """List again: every wanted subscription there, and none twice (a create retried after
    its answer was lost can make two; bem-exporter deletes nothing, so it says so)."""
    wanted = [*the_plan.missing, *(w for w, _ in the_plan.present)]
    try:
        now = (await list_subscriptions(client)).records
    except ApiError as error:
        return _failed(f"created, but could not list the subscriptions again: {describe(error)}")
    counts = [sum(w.delivered_by(s, url) for s in now) for w in wanted]
    there = sum(count > 0 for count in counts)
    twice = [w for w, count in zip(wanted, counts, strict=True) if count > 1]
    for w in twice:
        print(_row(w, "present more than once: delete all but one in bem"))
    print(f"subscribe: {there} of {len(wanted)} subscriptions deliver to {safe_url(url)}; {failed} failed")
    return 0 if there == len(wanted) and not failed else 1


def _failed(message: str) -> int:
    print(f"subscribe: FAILED: {message}")
    return 1
