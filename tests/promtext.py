"""Read a value out of Prometheus text (what ``GET /metrics`` serves), for the tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, /, **labels: str) -> float | None:
    """The value of sample ``name`` whose labels include ``labels``; None if there is none."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return None


def scrape(base_url: str, timeout_s: float = 5.0) -> str:
    """``GET {base_url}metrics``."""
    with urllib.request.urlopen(base_url + "metrics", timeout=timeout_s) as resp:
        return str(resp.read().decode())
