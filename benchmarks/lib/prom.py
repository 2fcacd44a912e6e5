"""A node's Prometheus metrics, read with prometheus_client's own text parser."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from lib.ports import url

__all__ = ["Metrics", "scrape"]


@dataclass(frozen=True)
class Metrics:
    """Every sample of one scrape: (sample name, labels, value)."""

    samples: tuple[tuple[str, frozenset[tuple[str, str]], float], ...]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls(tuple((s.name, frozenset(s.labels.items()), s.value)
                         for family in text_string_to_metric_families(text) for s in family.samples))

    def total(self, name: str) -> float:
        """The sum of every sample named `name` (a counter over all its label values)."""
        return sum(v for n, _, v in self.samples if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Samples named `name` summed by the value of one label ("" where it is absent)."""
        out: dict[str, float] = {}
        for n, labels, v in self.samples:
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


async def scrape(session: aiohttp.ClientSession, admin: int) -> Metrics:
    """GET /metrics of the node whose admin listener is on `admin`."""
    async with session.get(url(admin) + "/metrics") as r:
        return Metrics.parse(await r.text())
