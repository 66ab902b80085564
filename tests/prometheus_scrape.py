"""Read metrics the way Prometheus does: from each Ray node's metrics export endpoint."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

import ray
from prometheus_client.parser import text_string_to_metric_families


def node_metric_ports() -> dict[str, int]:
    """The metrics export port of every alive node of the connected Ray, by node id."""
    return {n["NodeID"]: n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}


def metric_samples(ports: Iterable[int], name: str, **labels: str) -> list[float]:
    """The values of a metric's samples on these nodes whose labels include `labels` (`name` as exported, e.g.
    `ray_vlray_rows_total`)."""
    values = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            values += [s.value for s in family.samples if s.name == name and labels.items() <= s.labels.items()]
    return values


def metric_total(ports: Iterable[int], name: str, **labels: str) -> float:
    """The sum of metric_samples."""
    return sum(metric_samples(ports, name, **labels))
