"""A Ray cluster of several nodes on this one machine (ray.cluster_utils.Cluster, every node on 127.0.0.1),
labelled like the clusters of cluster/: a head that doubles as the preprocessing node, and model nodes. For the
cluster benchmark and the multi-node tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.cluster_utils import Cluster

from actors.placement import ROLE_LABEL


@contextmanager
def simulated_cluster(num_model_nodes: int, model_node_cpus: float, head_cpus: float = 1.0,
                      object_store_bytes: int = 512 << 20,
                      system_config: dict[str, Any] | None = None) -> Iterator[Cluster]:
    """Start a head and `num_model_nodes` model nodes, connect this process to them, and stop them all on exit.

    Each node gets its own object store of `object_store_bytes` (Cluster's default, 150 MiB, is less than a few
    windows of preprocessed images). This process must not be connected to a Ray already (a Cluster cannot share
    it with another Ray)."""
    if ray.is_initialized():
        raise RuntimeError("this process is connected to a Ray already: ray.shutdown() it before starting a "
                           "simulated cluster")
    # The Cluster writes its address under RAY_TMPDIR, where a plain `ray.init()` on this machine looks for "the
    # current cluster": a folder of its own keeps other Rays here from joining it. Short, because Ray's socket
    # paths must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="vlray-mn-", dir="/tmp" if os.path.isdir("/tmp") else None)
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "object_store_memory": object_store_bytes, "include_dashboard": False,
            "labels": {ROLE_LABEL: "preprocess"}, "_system_config": system_config or {}})
        try:
            for _ in range(num_model_nodes):
                cluster.add_node(num_cpus=model_node_cpus, object_store_memory=object_store_bytes,
                                 labels={ROLE_LABEL: "model"})
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
    finally:
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp_dir, ignore_errors=True)
