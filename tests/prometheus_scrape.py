"""Read metrics the way Prometheus does: from each Ray node's metrics export endpoint."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

import ray
from prometheus_client.parser import text_string_to_metric_families


def node_metric_ports() -> dict[str, int]:
    """The metrics export port of every alive node of the connected Ray, by node id."""
    return {n["NodeID"]: n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}


def metric_total(ports: Iterable[int], name: str, **labels: str) -> float:
    """The sum of a metric's samples over the nodes, keeping the samples whose labels include `labels`
    (`name` as exported, e.g. `ray_vlray_rows_total`)."""
    total = 0.0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
    return total
