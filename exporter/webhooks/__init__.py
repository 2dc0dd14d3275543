"""The webhook listener: verify bem's signed deliveries, then hint the poll loop (never count).

`verify` checks the signature and its age, `event` reads the few fields a hint needs, `replay`
remembers accepted events, `intake` judges one delivery in the contract's order and hands it
over, and `listener` serves `POST /webhook` alone on its own address. The listener is not
imported here: it brings aiohttp's server (about 10 MiB), which only a process that serves
webhooks needs (`once` and `check` never do).
"""

from exporter.webhooks.event import Hint
from exporter.webhooks.intake import RESULTS, Answer, Handover, Intake, Result
from exporter.webhooks.replay import SeenEvents
from exporter.webhooks.verify import SIGNATURE_HEADER, Verifier, sign

__all__ = [
    "RESULTS",
    "SIGNATURE_HEADER",
    "Answer",
    "Handover",
    "Hint",
    "Intake",
    "Result",
    "SeenEvents",
    "Verifier",
    "sign",
]
