"""The simulated bem account: its functions, its workflows (as DAGs of nodes) and id helpers.

Five workflows cover the DAG shapes bem produces:

- `invoice-intake`: split fan-out (a split emitting `split_collection`, then one `split_item` per
  page, each spawning an extract), a join whose source is the last item to finish, then a chain.
- `claims-triage`: a classify with labelled outlets (`incomingDestinationName`), then a chain that
  forks into two unlabelled branches.
- `contract-review`: a parse that fans out into two chains (analyze -> render, transform -> send).
- `receipt-extract`: split fan-out without a join, each item running a two-step chain.
- `email-router`: a route with labelled outlets and short chains, on inbound emails.

A share of calls are direct (or adhoc) function calls of a single function.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field

CONTENT_MARKER = "SIMDOC-CONTENT"
"""Every piece of document content the simulator emits contains `SIMDOC-CONTENT-<n>`."""
URL_MARKER = "SIMSECRET"
"""Every presigned URL the simulator emits carries `X-Amz-Signature=SIMSECRET...`."""

CALL_TYPES = ("workflow", "direct_function", "adhoc_function")
STATUSES = ("pending", "running", "completed", "failed")
INPUT_TYPES = frozenset(
    {
        *("csv", "docx", "email", "heic", "html", "jfif", "jpeg", "json", "heif", "m4a", "mov"),
        *("mp3", "mp4", "pdf", "png", "pptx", "text", "wav", "webp", "xls", "xlsx", "xml"),
    }
)
"""Accepted `inputType` values (`jfif` and `jpg` are normalized to `jpeg`)."""

_B64_TO_B62 = bytes.maketrans(b"+/", b"xZ")


def random_id(rng: random.Random, prefix: str) -> str:
    """`prefix` + 20 random alphanumeric characters from `rng` (no relation to time)."""
    return prefix + base64.b64encode(rng.randbytes(15)).translate(_B64_TO_B62).decode("ascii")


def stable_id(prefix: str, name: str) -> str:
    """A fixed id derived from a name (for workflows and functions)."""
    digest = hashlib.sha256(name.encode()).digest()[:15]
    return prefix + base64.b64encode(digest).translate(_B64_TO_B62).decode("ascii")


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    type: str
    version: int
    display: str
    """What the function's single activity step is called."""
    median_seconds: float
    """Typical duration before the workload's time scaling."""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", stable_id("f_", self.name))


@dataclass(frozen=True, slots=True)
class Outlet:
    label: str
    weight: float
    node: Node


@dataclass(frozen=True, slots=True)
class Node:
    """A call-site node of a workflow DAG."""

    name: str
    function: Function
    next: tuple[Node, ...] = ()
    """Unlabelled edges: each spawned from the node's primary event."""
    outlets: tuple[Outlet, ...] = ()
    """Labelled edges of a classify/route node: one is chosen per call."""
    per_item: Node | None = None
    """Split nodes: what each `split_item` event spawns."""
    join: Node | None = None
    """Split nodes: joins the items once all have finished."""
    items: tuple[int, int] = (1, 1)
    """Split nodes: the range of the number of items."""


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    versions: tuple[int, ...]
    """Versions in use, newest last (the newest is used most)."""
    root: Node
    weight: float
    median_seconds: float
    """Median of the call's run time (first function call start to last finish) at speed 1."""
    reference_prefix: str
    input_type: str
    subject: str
    """Subject of the inbound email that carries the document."""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", stable_id("wf_", self.name))


def _fn(name: str, type_: str, version: int, display: str, median: float) -> Function:
    return Function(name, type_, version, display, median)


SPLIT_PAGES = _fn("split-invoice-pages", "split", 4, "Split pages", 4.0)
EXTRACT_INVOICE = _fn("extract-invoice", "extract", 9, "Extract invoice fields", 9.0)
JOIN_INVOICES = _fn("join-invoice-pages", "join", 2, "Join pages", 1.5)
NORMALIZE_INVOICE = _fn("normalize-invoice", "transform", 6, "Normalize invoice", 3.0)
SEND_ERP = _fn("send-to-erp", "send", 3, "Deliver to ERP", 1.5)

CLASSIFY_CLAIM = _fn("classify-claim", "classify", 5, "Classify claim", 2.5)
EXTRACT_AUTO = _fn("extract-auto-claim", "extract", 7, "Extract auto claim", 10.0)
EXTRACT_PROPERTY = _fn("extract-property-claim", "extract", 4, "Extract property claim", 12.0)
EXTRACT_HEALTH = _fn("extract-health-claim", "extract", 11, "Extract health claim", 14.0)
ENRICH_POLICY = _fn("enrich-policy", "enrich", 3, "Look up policy", 3.0)
ANALYZE_FRAUD = _fn("analyze-fraud-signals", "analyze", 2, "Analyze fraud signals", 6.0)
SEND_CLAIMS = _fn("send-claims-system", "send", 2, "Deliver to claims system", 1.2)

PARSE_CONTRACT = _fn("parse-contract", "parse", 8, "Parse contract", 12.0)
ANALYZE_CLAUSES = _fn("analyze-clauses", "analyze", 5, "Analyze clauses", 9.0)
RENDER_REVIEW = _fn("render-review-memo", "render", 3, "Render review memo", 5.0)
TRANSFORM_METADATA = _fn("transform-contract-metadata", "transform", 2, "Transform metadata", 3.0)
SEND_ARCHIVE = _fn("send-archive", "send", 1, "Archive", 1.0)

SPLIT_RECEIPTS = _fn("split-receipts", "split", 3, "Split receipts", 3.0)
EXTRACT_RECEIPT = _fn("extract-receipt", "extract", 14, "Extract receipt fields", 6.0)
SHAPE_EXPENSE = _fn("shape-expense", "payload_shaping", 6, "Shape expense payload", 0.8)

ROUTE_EMAIL = _fn("route-email", "route", 9, "Route email", 1.0)
TRANSFORM_BILLING = _fn("transform-billing-request", "transform", 4, "Transform billing request", 4.0)
SEND_BILLING = _fn("send-billing", "send", 2, "Deliver to billing", 1.0)
ENRICH_CUSTOMER = _fn("enrich-customer", "enrich", 5, "Look up customer", 2.0)
SEND_HELPDESK = _fn("send-helpdesk", "send", 6, "Deliver to helpdesk", 1.0)

CLASSIFY_DOCUMENT = _fn("classify-document", "classify", 12, "Classify document", 2.0)
TRANSFORM_GENERIC = _fn("transform-generic", "transform", 21, "Transform document", 5.0)
RENDER_LETTER = _fn("render-letter", "render", 2, "Render letter", 4.0)


def _chain(*nodes: tuple[str, Function]) -> Node:
    """A linear chain of nodes, the first one returned."""
    node: Node | None = None
    for name, function in reversed(nodes):
        node = Node(name, function, next=(node,) if node else ())
    assert node is not None
    return node


WORKFLOWS: tuple[Workflow, ...] = (
    Workflow(
        name="invoice-intake",
        versions=(2, 3),
        root=Node(
            "split",
            SPLIT_PAGES,
            per_item=Node("extract", EXTRACT_INVOICE),
            join=_chain(("join", JOIN_INVOICES), ("normalize", NORMALIZE_INVOICE), ("deliver", SEND_ERP)),
            items=(2, 6),
        ),
        weight=0.28,
        median_seconds=45.0,
        reference_prefix="INV",
        input_type="pdf",
        subject="Invoices for {month}",
    ),
    Workflow(
        name="claims-triage",
        versions=(6, 7),
        root=Node(
            "classify",
            CLASSIFY_CLAIM,
            outlets=tuple(
                Outlet(
                    label,
                    weight,
                    Node(
                        f"extract-{label}",
                        function,
                        next=(
                            Node(
                                "enrich",
                                ENRICH_POLICY,
                                next=(Node("fraud", ANALYZE_FRAUD), Node("deliver", SEND_CLAIMS)),
                            ),
                        ),
                    ),
                )
                for label, weight, function in (
                    ("auto", 0.5, EXTRACT_AUTO),
                    ("property", 0.3, EXTRACT_PROPERTY),
                    ("health", 0.2, EXTRACT_HEALTH),
                )
            ),
        ),
        weight=0.2,
        median_seconds=30.0,
        reference_prefix="CLM",
        input_type="pdf",
        subject="Claim submission {month}",
    ),
    Workflow(
        name="contract-review",
        versions=(2,),
        root=Node(
            "parse",
            PARSE_CONTRACT,
            next=(
                _chain(("clauses", ANALYZE_CLAUSES), ("memo", RENDER_REVIEW)),
                _chain(("metadata", TRANSFORM_METADATA), ("archive", SEND_ARCHIVE)),
            ),
        ),
        weight=0.12,
        median_seconds=70.0,
        reference_prefix="CTR",
        input_type="docx",
        subject="Contract for review ({month})",
    ),
    Workflow(
        name="receipt-extract",
        versions=(11, 12),
        root=Node(
            "split",
            SPLIT_RECEIPTS,
            per_item=_chain(("extract", EXTRACT_RECEIPT), ("shape", SHAPE_EXPENSE)),
            items=(1, 4),
        ),
        weight=0.22,
        median_seconds=15.0,
        reference_prefix="RCP",
        input_type="jpeg",
        subject="Receipts {month}",
    ),
    Workflow(
        name="email-router",
        versions=(4, 5),
        root=Node(
            "route",
            ROUTE_EMAIL,
            outlets=(
                Outlet("billing", 0.45, _chain(("billing", TRANSFORM_BILLING), ("to-billing", SEND_BILLING))),
                Outlet("support", 0.4, _chain(("customer", ENRICH_CUSTOMER), ("to-helpdesk", SEND_HELPDESK))),
                Outlet("other", 0.15, Node("archive", SEND_ARCHIVE)),
            ),
        ),
        weight=0.18,
        median_seconds=6.0,
        reference_prefix="MSG",
        input_type="email",
        subject="Question about my account ({month})",
    ),
)

DIRECT_FUNCTIONS: tuple[tuple[Function, float], ...] = (
    (EXTRACT_RECEIPT, 0.35),
    (CLASSIFY_DOCUMENT, 0.25),
    (TRANSFORM_GENERIC, 0.3),
    (RENDER_LETTER, 0.1),
)
"""Functions called directly (callType `direct_function`/`adhoc_function`), with weights."""

DIRECT_SHARE = 0.08
ADHOC_SHARE = 0.02


def _all_functions() -> dict[str, Function]:
    found: dict[str, Function] = {}

    def visit(node: Node) -> None:
        found[node.function.name] = node.function
        for child in node.next:
            visit(child)
        for outlet in node.outlets:
            visit(outlet.node)
        if node.per_item is not None:
            visit(node.per_item)
        if node.join is not None:
            visit(node.join)

    for workflow in WORKFLOWS:
        visit(workflow.root)
    for function, _ in DIRECT_FUNCTIONS:
        found[function.name] = function
    return found


FUNCTIONS_BY_NAME: dict[str, Function] = _all_functions()
FUNCTIONS_BY_ID: dict[str, Function] = {f.id: f for f in FUNCTIONS_BY_NAME.values()}
WORKFLOWS_BY_NAME: dict[str, Workflow] = {w.name: w for w in WORKFLOWS}
WORKFLOWS_BY_ID: dict[str, Workflow] = {w.id: w for w in WORKFLOWS}
