"""How a delivery attempt fails."""

from __future__ import annotations


class DeliveryError(Exception):
    """One attempt to deliver failed. `permanent`: trying again cannot help (a 4xx reply,
    a refused recipient, bad credentials); else it may (a timeout, a 5xx, a dropped
    connection). `retry_after`: seconds the receiver asked us to wait, if it said."""

    def __init__(self, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
