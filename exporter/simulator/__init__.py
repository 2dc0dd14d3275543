"""A faithful fake of bem's Calls API: the exporter's demo data source, the tests' counterpart and
the benchmarks' load.

A seeded workload of workflow calls (DAGs of function calls emitting events) arrives, queues,
runs and finishes with the clock; the HTTP server answers `GET /v3/calls`, `GET /v3/calls/{id}`,
`GET /v3/calls/{id}/trace`, `GET /v2/calls`, `GET /v2/calls/{id}`, `POST /v2/calls` and
`POST /v3/workflows/{name}/call` like bem does, with optional injected faults; and bem's
function quality metrics (`GET /v3/functions`, `GET /v3/functions/metrics`: `quality.py`),
whose accuracy a knob makes drift down (`SimulatorConfig.quality`). Calls whose
callReferenceID starts `bem-exporter-canary-` can be made to fail, hang or be refused at
creation (`Faults.canary_*`, or `POST /_simulator/canary` from another process).

The account side of webhooks too: `GET /v3/functions`, `/v3/subscriptions` and
`/v3/webhook-secret` as bem-sdk has them, and signed delivery of each event of a running call
to the subscriptions it matches, retried with backoff, with knobs that drop, duplicate, delay,
reorder, forge or age deliveries (`Webhooks`; `sim.deliveries` logs every attempt).

    sim = Simulator(SimulatorConfig(seed=7, prefill=1000))
    with SimulatorServer(sim) as url:
        ...  # point a client at url with x-api-key: sim-key
"""

from .catalog import CONTENT_MARKER, URL_MARKER, WORKFLOWS
from .config import CANARY_PREFIX, DEMO_WEBHOOK_SECRET, CanaryOutcome, Faults, SimulatorConfig, Webhooks
from .model import Simulator, UnknownTargetError
from .quality import QualityKnobs
from .query import ListQuery, QueryError, parse_list_query
from .server import SimulatorServer, serve

__all__ = [
    "CANARY_PREFIX",
    "CONTENT_MARKER",
    "DEMO_WEBHOOK_SECRET",
    "URL_MARKER",
    "WORKFLOWS",
    "CanaryOutcome",
    "Faults",
    "ListQuery",
    "QualityKnobs",
    "QueryError",
    "Simulator",
    "SimulatorConfig",
    "SimulatorServer",
    "UnknownTargetError",
    "Webhooks",
    "parse_list_query",
    "serve",
]
