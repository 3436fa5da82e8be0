"""Reference model of the round-robin arbiter, written from its specification.

Specification (docs/architecture.md, rtl/arbiter.py): requesters are ordered cyclically; the
grant goes to the first requester at or after the one holding the highest priority. When the
granted requester is served, priority passes to the requester after it; when it is not served,
priority stays with it.
"""


class RoundRobinModel:
    def __init__(self, count):
        self.count = count
        self.priority = 0

    def grant(self, requests):
        """Index granted for the request bit mask ``requests``, or None."""
        for offset in range(self.count):
            candidate = (self.priority + offset) % self.count
            if requests >> candidate & 1:
                return candidate
        return None

    def step(self, requests, advance):
        """Advance one clock cycle; returns the index granted during it (or None)."""
        granted = self.grant(requests)
        if granted is not None:
            self.priority = (granted + 1) % self.count if advance else granted
        return granted
