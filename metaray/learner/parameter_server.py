"""The parameter server: the current policy version and one reference to its weights.

Under Ray the payload is `[ObjectRef]` (wrapped in a list so Ray passes the reference, not the
weights): the learner puts each version's weights in the object store once, and every worker
reads that one copy. In serial mode the payload holds the weights themselves.
"""

from __future__ import annotations

from typing import Any


class ParameterServer:
    """Holds the newest version; rejects (and counts) publishes that are not newer."""

    def __init__(self) -> None:
        self.version = -1
        self.payload: list[Any] | None = None
        self.stale_publishes = 0
        self.publishes = 0

    def publish(self, version: int, payload: list[Any]) -> bool:
        if version <= self.version:
            self.stale_publishes += 1
            return False
        self.version, self.payload = version, payload
        self.publishes += 1
        return True

    def latest(self, newer_than: int = -1) -> tuple[int, list[Any]] | None:
        """The newest (version, payload), or None when the caller already has it."""
        if self.payload is None or self.version <= newer_than:
            return None
        return self.version, self.payload

    def stats(self) -> dict[str, int]:
        return {"version": self.version, "publishes": self.publishes, "stale_publishes": self.stale_publishes}
