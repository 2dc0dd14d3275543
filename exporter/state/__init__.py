"""Durable state: the `StateStore` protocol (`store`), its engines, and the single-writer guard."""

from exporter.state.sqlite import State
from exporter.state.store import Backfill, Changes, StateError

__all__ = ["Backfill", "Changes", "State", "StateError"]
