"""Where vlray's actors run: the one place that turns the cluster's nodes into Ray resources and scheduling
strategies. Actors never choose their own node; the batch job, the pipeline and the Serve app ask here.

- model actors (ModelWorker, the batch job's generate stage, Serve replicas): one GPU each where the cluster
  has GPUs (else a share of the CPUs), spread over as many nodes as possible, on the nodes labelled
  `vlray.io/role=model` when the cluster has some;
- preprocessing actors: on the nodes labelled `vlray.io/role=preprocess` (CPU-only workers) when the cluster
  has some, so that the CPUs of model nodes feed their models;
- the cache actor: on a node labelled `vlray.io/role=cache` when there is one, else beside the driver;
- the job's own bookkeeping actors (id registry, stats): beside the driver, so losing a worker node never
  loses them.

A role no alive node carries puts no constraint (a laptop has no labels). cluster/ configs label their nodes.

More model workers than GPUs alive: on a fixed cluster that is an error at once; where an autoscaler runs, the
job asks it for the GPUs and waits (actors/autoscaler.py), up to a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.autoscaler import DEFAULT_SCALE_TIMEOUT_S, NotEnoughGpusError, autoscaler_view, wait_for_gpus
from vlray.config import EngineConfig

ROLE_LABEL = "vlray.io/role"
"""The node label cluster/ configs set: `head`, `model` (GPU workers), `preprocess` (CPU workers), `cache`."""


@dataclass(frozen=True, slots=True)
class WorkerResources:
    """What Ray reserves for one model actor."""

    num_cpus: float
    num_gpus: float


GPU_PROFILES = ("sm61", "modern")
"""Device profiles that mean a GPU: asked for on a cluster with none alive, they wait for (or fail on) GPUs."""


def wants_gpus(cluster: Mapping[str, float], config: EngineConfig) -> bool:
    """Whether model actors take a GPU each: the profile names one, or it is `auto` and the cluster has some."""
    return config.device_profile in GPU_PROFILES or (cluster.get("GPU", 0.0) >= 1 and config.device_profile != "cpu")


def plan_worker_resources(cluster: Mapping[str, float], num_workers: int, config: EngineConfig,
                          num_cpus_per_worker: float | None = None, can_autoscale: bool = False) -> WorkerResources:
    """One GPU per worker where the cluster has GPUs (or the profile names one); else the CPUs shared among workers.

    More workers than GPUs alive is an error on a fixed cluster; with `can_autoscale`, the plan stands and the
    caller asks the autoscaler for the rest. A profile of `cpu` keeps workers off GPUs even where there are some.
    """
    gpus = cluster.get("GPU", 0.0)
    if wants_gpus(cluster, config):
        if num_workers > gpus and not can_autoscale:
            raise NotEnoughGpusError(
                f"{num_workers} GPU workers asked for, but the cluster has {int(gpus)} GPUs and no autoscaler to add "
                "more: use --num-workers at most the GPU count (one model per GPU).")
        return WorkerResources(num_cpus=num_cpus_per_worker or 1.0, num_gpus=1.0)
    cpus = cluster.get("CPU", 1.0)
    return WorkerResources(num_cpus=num_cpus_per_worker or max(1.0, float(int(cpus // num_workers))), num_gpus=0.0)


def replica_actor_options(resources: WorkerResources) -> dict[str, Any]:
    """A Serve replica's ray_actor_options: its GPU (or CPUs). Serve's own scheduler spreads replicas over nodes
    (its default), which is the policy model actors follow elsewhere; Serve takes no scheduling_strategy."""
    return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """Which node labels mean what; the defaults match the labels cluster/ configs give their nodes."""

    label_key: str = ROLE_LABEL
    model_role: str | None = "model"
    """Role of the nodes model actors run on, when the cluster has any; None: any node with the resources."""
    preprocess_role: str | None = "preprocess"
    """Role of the nodes preprocessing runs on, when the cluster has any; None: anywhere."""
    cache_role: str | None = "cache"
    """Role of the node the cache actor runs on, when the cluster has one; else beside the driver."""

    def __post_init__(self) -> None:
        if not self.label_key:
            raise ValueError("PlacementConfig.label_key is empty: give the node label that names a node's role "
                             f"(cluster/ configs use {ROLE_LABEL!r}).")
        for name in ("model_role", "preprocess_role", "cache_role"):
            value = getattr(self, name)
            if value is not None and (not value or any(c in value for c in "!(),")):
                raise ValueError(f"PlacementConfig.{name}={value!r}: give a plain label value such as 'model', "
                                 "or None for no constraint.")


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement needs to know about one alive node."""

    node_id: str
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


class Placement:
    """Ray options for each kind of vlray actor, planned from the cluster's nodes as they are now."""

    def __init__(self, nodes: Sequence[NodeView], driver_node_id: str,
                 config: PlacementConfig | None = None) -> None:
        self.nodes = list(nodes)
        self.driver_node_id = driver_node_id
        self.config = config or PlacementConfig()

    @classmethod
    def of_cluster(cls, config: PlacementConfig | None = None) -> "Placement":
        """The placement for the Ray this process is connected to."""
        nodes = [NodeView(n["NodeID"], n.get("Resources", {}), n.get("Labels", {})) for n in ray.nodes()
                 if n.get("Alive")]
        return cls(nodes, ray.get_runtime_context().get_node_id(), config)

    def model_node_resources(self) -> dict[str, float]:
        """The resources of the nodes model actors may use (the model nodes, or every node), summed."""
        nodes = self.nodes
        if self.has_role(self.config.model_role):
            nodes = [n for n in nodes if n.labels.get(self.config.label_key) == self.config.model_role]
        total: dict[str, float] = {}
        for node in nodes:
            for name, amount in node.resources.items():
                total[name] = total.get(name, 0.0) + amount
        return total

    def has_role(self, role: str | None) -> bool:
        """Whether an alive node carries this role's label."""
        return role is not None and any(n.labels.get(self.config.label_key) == role for n in self.nodes)

    def _on_role(self, role: str | None) -> dict[str, Any]:
        return {"label_selector": {self.config.label_key: role}} if self.has_role(role) else {}

    def model_options(self, resources: WorkerResources) -> dict[str, Any]:
        """A model actor's GPU (or CPUs) and nodes, as Ray Data's map_batches takes them: Ray Data spreads its
        actors over nodes itself (and deprecates being given a scheduling strategy)."""
        return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
                **self._on_role(self.config.model_role)}

    def model_actor_options(self, resources: WorkerResources) -> dict[str, Any]:
        """model_options for an actor created directly (ModelWorker): spread over the nodes."""
        return {**self.model_options(resources), "scheduling_strategy": "SPREAD"}

    def preprocess_options(self) -> dict[str, Any]:
        """Preprocessing actors: on the preprocessing (CPU) nodes where the cluster has some."""
        return self._on_role(self.config.preprocess_role)

    def cache_options(self) -> dict[str, Any]:
        """The cache actor: on the cache node when there is one, else beside the driver (the head, under
        `ray job submit`), which lives as long as the cluster does."""
        return self._on_role(self.config.cache_role) or self.control_options()

    def control_options(self) -> dict[str, Any]:
        """The job's bookkeeping actors: on the driver's node (hard, not soft: Ray may spill a soft choice to any
        node, and these are worth nothing without the driver)."""
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.driver_node_id, soft=False)}


def place_model_workers(num_workers: int, config: EngineConfig, num_cpus_per_worker: float | None = None,
                        placement: PlacementConfig | None = None,
                        scale_timeout_s: float = DEFAULT_SCALE_TIMEOUT_S) -> tuple[Placement, WorkerResources]:
    """The placement and resources for `num_workers` model actors on the connected Ray, once their GPUs are alive:
    where fewer are and an autoscaler runs, it is asked for them and waited for (up to scale_timeout_s)."""
    plan = Placement.of_cluster(placement)
    cluster = plan.model_node_resources()
    alive = cluster.get("GPU", 0.0)
    can_autoscale = wants_gpus(cluster, config) and num_workers > alive and autoscaler_view().is_running
    resources = plan_worker_resources(cluster, num_workers, config, num_cpus_per_worker, can_autoscale)
    if resources.num_gpus and num_workers > alive:
        selector = plan.model_options(resources).get("label_selector", {})
        wait_for_gpus(num_workers, {"CPU": resources.num_cpus, "GPU": 1.0}, selector,
                      lambda: Placement.of_cluster(placement).model_node_resources().get("GPU", 0.0),
                      scale_timeout_s)
        plan = Placement.of_cluster(placement)  # the new nodes, and the model role where they brought it
    return plan, resources
