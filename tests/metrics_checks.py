"""Reading what a listener serves on its metrics port: its address, metrics and probes."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.processes import OutputProcess

_SERVING = re.compile(r"Serving metrics, probes and the status page on (http://\S+/)")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def served_url(process: OutputProcess) -> str:
    """The base URL a listener process said it serves (waiting for the line)."""
    process.wait_for_output("Serving metrics")
    match = _SERVING.search(process.output)
    assert match is not None, process.output
    return match.group(1)


def get(url: str) -> tuple[int, str]:
    """GET *url*: the status and the body, 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(base + path.lstrip("/"))
    return status, json.loads(body)


def scrape(base: str) -> Samples:
    """Every sample of ``/metrics``, keyed by name and labels."""
    status, text = get(base + "metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the sample *name* with exactly *labels*, or ``None`` if absent."""
    return samples.get((name, frozenset(labels.items())))
