"""The poll loop in parts: discovery, refresh, the batch, and the cycle that runs them."""

from exporter.poll.cycle import PollLoop
from exporter.poll.traces import ApiTraces

__all__ = ["ApiTraces", "PollLoop"]
