"""The webhook listener: verify bem's signed deliveries, then hint the poll loop (never count).

`verify` checks the signature and its age, `event` reads the few fields a hint needs, `replay`
remembers accepted events, `intake` judges one delivery in the contract's order and hands it
over, and `listener` serves `POST /webhook` alone on its own address.
"""

from exporter.webhooks.event import Hint
from exporter.webhooks.intake import RESULTS, Answer, Handover, Intake, Result
from exporter.webhooks.listener import MAX_BODY, PATH, WebhookServer
from exporter.webhooks.replay import SeenEvents
from exporter.webhooks.verify import SIGNATURE_HEADER, Verifier, sign

__all__ = [
    "MAX_BODY",
    "PATH",
    "RESULTS",
    "SIGNATURE_HEADER",
    "Answer",
    "Handover",
    "Hint",
    "Intake",
    "Result",
    "SeenEvents",
    "Verifier",
    "WebhookServer",
    "sign",
]
