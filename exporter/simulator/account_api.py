"""The account's endpoints the webhook setup uses: functions, subscriptions, the signing secret.

`GET /v3/functions`; `POST/GET /v3/subscriptions`, `GET/PATCH/DELETE
/v3/subscriptions/{subscriptionID}`; `GET/POST/DELETE /v3/webhook-secret`, with bem-sdk's
shapes (a subscription listing is a bare JSON array, as the SDK's `SubscriptionListResponse`).
The app also runs the webhook dispatcher (`exporter.simulator.webhooks`) while it serves.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from .app import error_response
from .create import BadRequestError, decode_json
from .model import Simulator
from .query import QueryError, parse_limit
from .subscriptions import NotFoundError
from .webhooks import deliver_webhooks

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_encode = msgspec.json.Encoder().encode
_NO_SECRET = "no webhook signing secret exists: generate one with POST /v3/webhook-secret"


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(doc), content_type="application/json")


def _refusals(handler: Handler) -> Handler:
    """Answer the model's refusals as bem does: 400 with the field, 404."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequestError as error:
            return error_response(400, error.message, error.details)
        except QueryError as error:
            return _json(error.body(), 400)
        except NotFoundError as error:
            return error_response(404, str(error.args[0]))

    return answer


class _AccountApi:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator

    async def create_subscription(self, request: web.Request) -> web.StreamResponse:
        body = decode_json(await request.read())
        return _json(self._sim.subscriptions.create(body, self._sim.now_ms()).doc())

    async def list_subscriptions(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        names = {n.strip() for v in query.getall("functionNames", []) for n in v.split(",") if n.strip()}
        page = self._sim.subscriptions.page(
            parse_limit(query.get("limit")),
            query.get("startingAfter") or None,
            query.get("endingBefore") or None,
            frozenset(names) if names else None,
        )
        return _json([subscription.doc() for subscription in page])

    async def get_subscription(self, request: web.Request) -> web.StreamResponse:
        return _json(self._sim.subscriptions.get(request.match_info["subscriptionID"]).doc())

    async def update_subscription(self, request: web.Request) -> web.StreamResponse:
        body = decode_json(await request.read())
        return _json(self._sim.subscriptions.update(request.match_info["subscriptionID"], body).doc())

    async def delete_subscription(self, request: web.Request) -> web.StreamResponse:
        self._sim.subscriptions.delete(request.match_info["subscriptionID"])
        return web.Response(status=204)

    async def get_secret(self, _: web.Request) -> web.StreamResponse:
        secret = self._sim.config.webhooks.secret
        return error_response(404, _NO_SECRET) if secret is None else _json({"secret": secret})

    async def generate_secret(self, _: web.Request) -> web.StreamResponse:
        """A new secret, shown this once; deliveries from now on are signed with it."""
        secret = "SIMWHSEC-" + secrets.token_urlsafe(24)
        self._sim.config.webhooks.secret = secret
        return _json({"secret": secret})

    async def revoke_secret(self, _: web.Request) -> web.StreamResponse:
        """Deliveries go on, unsigned, until a new secret is generated."""
        self._sim.config.webhooks.secret = None
        return web.Response(status=204)


def add_account_routes(app: web.Application, prefix: str, simulator: Simulator) -> None:
    """Serve the account endpoints under `prefix`, and deliver webhooks while `app` runs."""
    api = _AccountApi(simulator)
    router = app.router
    one = prefix + "/v3/subscriptions/{subscriptionID}"
    router.add_post(prefix + "/v3/subscriptions", _refusals(api.create_subscription))
    router.add_get(prefix + "/v3/subscriptions", _refusals(api.list_subscriptions), allow_head=False)
    router.add_get(one, _refusals(api.get_subscription), allow_head=False)
    router.add_patch(one, _refusals(api.update_subscription))
    router.add_delete(one, _refusals(api.delete_subscription))
    router.add_get(prefix + "/v3/webhook-secret", api.get_secret, allow_head=False)
    router.add_post(prefix + "/v3/webhook-secret", api.generate_secret)
    router.add_delete(prefix + "/v3/webhook-secret", api.revoke_secret)
    app.cleanup_ctx.append(deliver_webhooks(simulator))
