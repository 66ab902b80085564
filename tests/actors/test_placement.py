"""actors/placement.py planned from node tables (no Ray needed): roles apply where some node carries them, model
actors spread and counted over the model nodes only, bookkeeping and cache actors beside the driver; more model
workers than GPUs fail at once on a fixed cluster and ask the autoscaler (faked here) where one runs."""

import logging

import pytest
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import actors.autoscaler as autoscaler_module
import actors.placement as placement_module
from actors.autoscaler import AutoscalerView, NotEnoughGpusError, autoscaler_view, wait_for_gpus
from actors.serve.deployment import replica_resources
from actors.placement import (ROLE_LABEL, NodeView, Placement, PlacementConfig, WorkerResources, place_model_workers,
                              plan_worker_resources)
from vlray.config import EngineConfig
from vlray.serving.server_config import ServerConfig

ONE_GPU = WorkerResources(num_cpus=1.0, num_gpus=1.0)
LAPTOP_ID, HEAD_ID = "1" * 56, "2" * 56  # Ray node ids are 28 bytes in hex


def _node(node_id: str, role: str | None = None, **resources: float) -> NodeView:
    return NodeView(node_id, resources, {ROLE_LABEL: role} if role else {})


LAPTOP = [_node(LAPTOP_ID, CPU=8, GPU=1)]
CLUSTER = [_node(HEAD_ID, "head", CPU=0), _node("gpu-a", "model", CPU=4, GPU=1), _node("gpu-b", "model", CPU=4, GPU=2),
           _node("cpu-a", "preprocess", CPU=16)]


def _on_driver(options: dict, driver: str) -> bool:
    strategy = options["scheduling_strategy"]
    return isinstance(strategy, NodeAffinitySchedulingStrategy) and strategy.node_id == driver and not strategy.soft


def test_a_laptop_puts_no_constraint_but_keeps_bookkeeping_beside_the_driver():
    placement = Placement(LAPTOP, LAPTOP_ID)
    assert placement.model_options(ONE_GPU) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert placement.model_actor_options(ONE_GPU) == {"num_cpus": 1.0, "num_gpus": 1.0, "scheduling_strategy": "SPREAD"}
    assert placement.preprocess_options() == {}
    assert placement.model_node_resources() == {"CPU": 8, "GPU": 1}
    assert _on_driver(placement.control_options(), LAPTOP_ID) and _on_driver(placement.cache_options(), LAPTOP_ID)


def test_a_labelled_cluster_sends_each_role_to_its_nodes():
    placement = Placement(CLUSTER, HEAD_ID)
    assert placement.model_options(ONE_GPU)["label_selector"] == {ROLE_LABEL: "model"}
    assert placement.model_actor_options(ONE_GPU)["scheduling_strategy"] == "SPREAD"
    assert placement.preprocess_options() == {"label_selector": {ROLE_LABEL: "preprocess"}}
    assert placement.model_node_resources() == {"CPU": 8, "GPU": 3}  # what model actors may share: not the CPU node
    assert _on_driver(placement.control_options(), HEAD_ID)
    assert _on_driver(placement.cache_options(), HEAD_ID)  # no cache node
    with_cache = Placement([*CLUSTER, _node("ssd", "cache", CPU=2)], HEAD_ID)
    assert with_cache.cache_options() == {"label_selector": {ROLE_LABEL: "cache"}}


def test_roles_can_be_renamed_or_turned_off():
    renamed = PlacementConfig(label_key="team/role", model_role="gpu", preprocess_role=None, cache_role="model")
    nodes = [NodeView("a", {"CPU": 4, "GPU": 1}, {"team/role": "gpu"}),
             NodeView("b", {"CPU": 4}, {"team/role": "model"})]
    placement = Placement(nodes, HEAD_ID, renamed)
    assert placement.model_options(ONE_GPU)["label_selector"] == {"team/role": "gpu"}
    assert placement.preprocess_options() == {}
    assert placement.cache_options() == {"label_selector": {"team/role": "model"}}


@pytest.mark.parametrize("fields, fragment", [
    ({"label_key": ""}, "label_key is empty"),
    ({"model_role": ""}, "model_role=''"),
    ({"preprocess_role": "!gpu"}, "plain label value"),
    ({"cache_role": "in(a,b)"}, "plain label value"),
])
def test_bad_config_says_what_to_change(fields, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        PlacementConfig(**fields)


# More model workers than GPUs alive: a fixed cluster fails at once, an autoscaling one asks for them and waits.

def test_a_fixed_cluster_short_of_gpus_fails_at_once_and_an_autoscaling_one_plans_on():
    config = EngineConfig(model="m")
    with pytest.raises(NotEnoughGpusError, match="no autoscaler to add more"):
        plan_worker_resources({"CPU": 8, "GPU": 1}, 4, config)
    assert plan_worker_resources({"CPU": 8, "GPU": 1}, 4, config, can_autoscale=True) == ONE_GPU
    gpu_profile = config.with_updates(device_profile="sm61")
    assert plan_worker_resources({"CPU": 8}, 2, gpu_profile, can_autoscale=True) == ONE_GPU  # none alive yet
    assert plan_worker_resources({"CPU": 8}, 2, config, can_autoscale=True).num_gpus == 0  # auto, no GPU: a laptop


class _Autoscaler:
    """request_resources as the autoscaler sees it, and GPUs that join after some polls."""

    def __init__(self, alive: list[float], infeasible: bool = False) -> None:
        self.alive, self.infeasible, self.requests = list(alive), infeasible, []

    def request(self, bundles=None, bundle_label_selectors=None):
        self.requests.append((bundles, bundle_label_selectors))

    def gpus_alive(self) -> float:
        return self.alive.pop(0) if len(self.alive) > 1 else self.alive[0]

    def view(self) -> AutoscalerView:
        return AutoscalerView(is_running=True, infeasible=self.infeasible)


def _wait(monkeypatch, autoscaler: _Autoscaler, timeout_s: float = 60.0) -> float:
    monkeypatch.setattr(autoscaler_module, "request_resources", autoscaler.request)
    return wait_for_gpus(3, {"CPU": 1.0, "GPU": 1.0}, {ROLE_LABEL: "model"}, autoscaler.gpus_alive, timeout_s,
                         poll_s=0.0, view=autoscaler.view)


def test_waiting_asks_for_one_bundle_per_worker_and_withdraws_the_request(monkeypatch):
    autoscaler = _Autoscaler(alive=[1, 1, 2, 3])
    assert _wait(monkeypatch, autoscaler) == 3
    assert autoscaler.requests[0] == ([{"CPU": 1.0, "GPU": 1.0}] * 3, [{ROLE_LABEL: "model"}] * 3)
    assert autoscaler.requests[-1] == ([], None) and len(autoscaler.requests) == 2


@pytest.mark.parametrize("infeasible, fragment", [(False, "after 0 s 1 are alive"), (True, "raise max_workers")])
def test_a_timeout_or_an_infeasible_request_says_what_to_change(monkeypatch, infeasible, fragment):
    autoscaler = _Autoscaler(alive=[1], infeasible=infeasible)
    with pytest.raises(NotEnoughGpusError, match=fragment) as caught:
        _wait(monkeypatch, autoscaler, timeout_s=0.0)
    assert "asked the autoscaler for 3 GPUs on nodes labelled {'vlray.io/role': 'model'}" in str(caught.value)
    assert autoscaler.requests[-1] == ([], None)  # withdrawn on failure too


def test_placing_model_workers_waits_only_where_an_autoscaler_runs(monkeypatch):
    nodes = [_node(HEAD_ID, "head", CPU=0), _node("gpu-a", "model", CPU=4, GPU=1)]
    monkeypatch.setattr(Placement, "of_cluster", classmethod(lambda cls, config=None: Placement(nodes, HEAD_ID)))
    waits = []
    monkeypatch.setattr(placement_module, "wait_for_gpus", lambda *args, **kwargs: waits.append(args))
    config = EngineConfig(model="m")
    monkeypatch.setattr(placement_module, "autoscaler_view", lambda: AutoscalerView(is_running=False))
    with pytest.raises(NotEnoughGpusError, match="4 GPU workers asked for, but the cluster has 1 GPUs"):
        place_model_workers(4, config)
    assert place_model_workers(1, config)[1] == ONE_GPU and waits == []  # enough GPUs: nobody is asked
    monkeypatch.setattr(placement_module, "autoscaler_view", lambda: AutoscalerView(is_running=True))
    plan, resources = place_model_workers(4, config, scale_timeout_s=30.0)
    assert resources == ONE_GPU and plan.model_options(resources)["label_selector"] == {ROLE_LABEL: "model"}
    ((num_gpus, bundle, selector, gpus_alive, timeout_s),) = waits
    assert (num_gpus, bundle, selector, timeout_s) == (4, {"CPU": 1.0, "GPU": 1.0}, {ROLE_LABEL: "model"}, 30.0)
    assert gpus_alive() == 1


def test_the_serve_builder_says_where_its_gpu_count_comes_from(caplog):
    caplog.set_level(logging.INFO, logger="actors.serve.deployment")
    stated = ServerConfig(model="m", num_replicas=2, num_gpus_per_replica=1)
    assert replica_resources(stated, {"CPU": 4}) == ONE_GPU  # no GPU alive yet: the config's word stands
    assert "2 replicas, 1 GPUs each (num_gpus_per_replica)" in caplog.text
    read_off = ServerConfig(model="m", num_replicas=2)
    assert replica_resources(read_off, {"CPU": 4}, can_autoscale=False).num_gpus == 0
    assert "read off the GPUs alive now (0 on the model nodes)" in caplog.text
    assert replica_resources(read_off, {"CPU": 4, "GPU": 1}, can_autoscale=True) == ONE_GPU
    assert "the autoscaler adds the rest" in caplog.text
    with pytest.raises(ValueError, match="no autoscaler can add them"):
        replica_resources(read_off, {"CPU": 4, "GPU": 1}, can_autoscale=False)


def test_a_cluster_started_by_hand_has_no_autoscaler_to_ask(ray_local):
    import json
    import time

    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + 30  # the head's monitor reports every few seconds, through a read-only provider
    while time.monotonic() < deadline:
        status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        if status and "autoscaler_report" in json.loads(status):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the monitor never reported")
    assert autoscaler_view() == AutoscalerView(is_running=False)
