"""cluster/: every file parses, and each one validates with what will read it: the `ray up` config with Ray's
autoscaler schema, the Serve configs with Ray Serve's schema and the app builder itself, the runtime_env with
Ray's RuntimeEnv, the RayJob's command with the batch job's own parser. The runtime_env is the same everywhere,
and every node carries a role that actors/placement.py knows."""

import re
import shlex
from pathlib import Path

import pytest
import yaml
from ray._private.label_utils import parse_node_labels_string
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeDeploySchema

from actors.data.batch_job import parse_args
from actors.placement import ROLE_LABEL, PlacementConfig
from jobs.serve import app as build_serve_app

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
ROLES = {"head", PlacementConfig().model_role, PlacementConfig().preprocess_role, PlacementConfig().cache_role}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


RUNTIME_ENV = _load("runtime_env.yaml")


def test_every_yaml_file_parses_to_a_mapping():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_runtime_env_is_one_ray_accepts():
    env = RuntimeEnv(**RUNTIME_ENV)
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_ray_up_config_validates_with_rays_schema():
    config = _load("ray_up.yaml")
    validate_config(prepare_config(config))  # the schema `ray up` checks, with its defaults filled in
    node_types = config["available_node_types"]
    roles = {name: node["labels"][ROLE_LABEL] for name, node in node_types.items()}
    assert roles == {"head": "head", "model": "model", "preprocess": "preprocess"} and set(roles.values()) <= ROLES
    assert node_types["head"]["resources"] == {"CPU": 0}


def _groups(cluster_spec: dict) -> dict[str, dict]:
    """Each group's role label and container: head and worker groups alike."""
    groups = {"head": cluster_spec["headGroupSpec"]} | {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}
    return {name: {"role": parse_node_labels_string(group["rayStartParams"]["labels"])[ROLE_LABEL],
                   "container": group["template"]["spec"]["containers"][0]} for name, group in groups.items()}


def _check_cluster_spec(cluster_spec: dict, num_model_actors: int) -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    ray_version = re.search(r"^FROM rayproject/ray:([\d.]+)-", dockerfile, re.M).group(1)
    assert cluster_spec["rayVersion"] == ray_version
    groups = _groups(cluster_spec)
    assert {g["role"] for g in groups.values()} <= ROLES and groups["head"]["role"] == "head"
    assert {g["container"]["image"] for g in groups.values()} == {"vlray:0.1.0"}
    model_groups = [g for g in cluster_spec["workerGroupSpecs"] if groups[g["groupName"]]["role"] == "model"]
    gpus = sum(g["replicas"] * int(groups[g["groupName"]]["container"]["resources"]["limits"]["nvidia.com/gpu"])
               for g in model_groups)
    assert gpus >= num_model_actors  # one model per GPU


def test_rayjob_runs_the_batch_command_on_a_cluster_that_fits_it():
    job = _load("kuberay/rayjob-batch.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "jobs.batch"]
    args = parse_args(command[3:])  # the batch job's own parser: every option exists, every value is valid
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == RUNTIME_ENV
    RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    _check_cluster_spec(job["spec"]["rayClusterSpec"], args.num_workers)


@pytest.mark.parametrize("source", ["serve_config.yaml", "kuberay/rayservice.yaml"])
def test_serve_configs_validate_with_serves_schema_and_the_app_builder(source):
    document = _load(source)
    if document.get("kind") == "RayService":
        assert document["apiVersion"] == "ray.io/v1"
        serve_config = yaml.safe_load(document["spec"]["serveConfigV2"])
    else:
        serve_config = document
    schema = ServeDeploySchema.model_validate(serve_config)
    (application,) = schema.applications
    assert application.import_path == "jobs.serve:app"
    assert application.runtime_env == RUNTIME_ENV
    build_serve_app(application.args)  # what Serve calls with the args: unknown or bad values raise here
    if document.get("kind") == "RayService":
        _check_cluster_spec(document["spec"]["rayClusterConfig"], application.args["num_replicas"])
