"""actors/placement.py planned from node tables (no Ray needed): roles apply where some node carries them, model
actors spread and counted over the model nodes only, bookkeeping and cache actors beside the driver."""

import pytest
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.placement import ROLE_LABEL, NodeView, Placement, PlacementConfig, WorkerResources

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
