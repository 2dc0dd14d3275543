"""One logger of health transitions: a dependency that is down for an hour is one line when
it goes down and one when it comes back, not a line per failed attempt."""

from __future__ import annotations

import logging
from typing import Any


class HealthLog:
    def __init__(self, logger: logging.Logger, subject: str) -> None:
        self._log = logger
        self._subject = subject
        self._healthy: bool | None = None
        self._cause: str | None = None

    @property
    def healthy(self) -> bool | None:
        """None until the first observation."""
        return self._healthy

    def ok(self, **extra: Any) -> None:
        if self._healthy is False:
            self._log.info("%s recovered", self._subject, extra=extra)
        self._healthy, self._cause = True, None

    def failing(self, cause: str, *, level: int = logging.WARNING, **extra: Any) -> None:
        """Log when health changes, or when the cause of a failure changes (a rejected key
        after an outage is a different problem and says so)."""
        if self._healthy is not False or cause != self._cause:
            self._log.log(level, "%s failing: %s", self._subject, cause, extra=extra)
        self._healthy, self._cause = False, cause
