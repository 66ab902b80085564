"""Asking Ray's autoscaler for the model nodes a job needs, and waiting for them.

A cluster started by `ray up` (or KubeRay with enableInTreeAutoscaling) runs an autoscaler that adds nodes up to
each node type's max_workers. A job that wants more model workers than the GPUs alive asks it for them with
`request_resources` (one bundle per worker, on the model nodes' label where the cluster has one), waits until
they join, then withdraws the request so the cluster can shrink again when the job is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ray
from ray.autoscaler.sdk import request_resources

DEFAULT_SCALE_TIMEOUT_S = 900.0
"""How long a job waits for the autoscaler's new GPU nodes: a cloud GPU instance boots and installs in minutes."""


@dataclass(frozen=True, slots=True)
class AutoscalerView:
    """What the autoscaler says about the cluster, as far as placement needs it."""

    is_running: bool
    infeasible: bool = False
    """v2 only: the autoscaler reported a resource request it cannot fit with any node type it may add."""


def autoscaler_view() -> AutoscalerView:
    """Whether an autoscaler that can add nodes manages the connected cluster.

    Every Ray head runs a monitor, but on a cluster started by hand (or by ray.init) it drives a read-only
    provider that launches nothing. Nodes an autoscaler launched carry their node type's name (ray up and KubeRay
    set RAY_NODE_TYPE_NAME), where the read-only provider has none (v2) or names each node after its id (v1)."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if is_autoscaler_v2(fetch_from_server=True):
        from ray._raylet import GcsClient
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        reply = GetClusterStatusReply.FromString(
            GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
        state = reply.autoscaling_state
        typed = any(node.ray_node_type_name for node in reply.cluster_resource_state.node_states)
        return AutoscalerView(is_running=state.autoscaler_state_version > 0 and typed,
                              infeasible=len(state.infeasible_cluster_resource_constraints) > 0)
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    report = json.loads(status).get("autoscaler_report") if status else None
    node_types = (report or {}).get("node_type_mapping") or {}
    return AutoscalerView(is_running=any(name != format_readonly_node_type(node_id)
                                         for node_id, name in node_types.items()))


class NotEnoughGpusError(ValueError):
    """More model workers than the cluster has GPUs, and none coming: the autoscaler has none to add, said it
    cannot fit them, or did not bring them in time (a ValueError: the command asked for too much)."""


def wait_for_gpus(num_gpus: int, bundle: Mapping[str, float], label_selector: Mapping[str, str],
                  gpus_alive: Callable[[], float], timeout_s: float, poll_s: float = 5.0,
                  view: Callable[[], AutoscalerView] = autoscaler_view) -> float:
    """Ask the autoscaler for `num_gpus` bundles and wait until `gpus_alive()` reaches that many; returns it.

    The request is withdrawn however the wait ends: a request left standing would keep the nodes up forever."""
    request_resources(bundles=[dict(bundle)] * num_gpus, bundle_label_selectors=[dict(label_selector)] * num_gpus)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            alive = gpus_alive()
            if alive >= num_gpus:
                return alive
            where = f" on nodes labelled {dict(label_selector)}" if label_selector else ""
            if view().infeasible:
                raise NotEnoughGpusError(
                    f"asked the autoscaler for {num_gpus} GPUs{where} ({dict(bundle)} each); it says no node type "
                    f"it may add fits them, and {int(alive)} are alive: raise max_workers of the GPU node type, or "
                    "ask for fewer --num-workers.")
            if time.monotonic() >= deadline:
                raise NotEnoughGpusError(
                    f"asked the autoscaler for {num_gpus} GPUs{where} ({dict(bundle)} each); after {timeout_s:.0f} s "
                    f"{int(alive)} are alive. Wait longer (--scale-timeout), check the autoscaler's log (`ray "
                    "status`, `ray monitor`) for failed launches, or ask for fewer --num-workers.")
            time.sleep(poll_s)
    finally:
        request_resources(bundles=[])
