"""cluster/: every file parses, and each one validates with what will read it: the KubeRay manifests with the
ray.io/v1 schema, strictly (unknown fields are errors, as with `kubectl --validate=strict`), and with the
operator's admission rules; the `ray up` config with Ray's autoscaler schema; the Serve configs with Ray Serve's
schema and the app builder itself; the runtime_env with Ray's RuntimeEnv; the RayJob's command with the batch
job's own parser. The runtime_env is the same everywhere, Ray is pinned to one version everywhere, and every node
carries a role that actors/placement.py knows."""

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeDeploySchema

from actors.data.batch_job import parse_args
from actors.placement import ROLE_LABEL, PlacementConfig
from jobs.serve import app as build_serve_app
from tests.cluster.kuberay_admission import ray_job_errors, ray_service_errors
from tests.cluster.kuberay_schema import KUBERAY_VERSION, k8s_registry, resource_schema

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
ROLES = {"head", PlacementConfig().model_role, PlacementConfig().preprocess_role, PlacementConfig().cache_role}
IMAGE = "${REGISTRY}/vlray:0.1.0"
MANIFESTS = ["kuberay/rayjob-batch.yaml", "kuberay/rayservice.yaml"]
ADMISSION = {"RayJob": ray_job_errors, "RayService": ray_service_errors}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec" if manifest["kind"] == "RayJob" else "rayClusterConfig"]


RUNTIME_ENV = _load("runtime_env.yaml")
RAY_VERSION = re.search(r"^FROM rayproject/ray:([\d.]+)-", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)


def _envsubst(text: str, name: str, value: str) -> str:
    """What `envsubst '$NAME'` does: that one variable replaced, every other `$` left alone."""
    return re.sub(rf"\$\{{{name}\}}|\${name}\b", value, text)


def _schema_errors(manifest: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(resource_schema(manifest["kind"]), registry=k8s_registry())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def test_every_yaml_file_parses_to_a_mapping():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_runtime_env_is_one_ray_accepts():
    env = RuntimeEnv(**RUNTIME_ENV)
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("source", MANIFESTS)
def test_kuberay_manifests_pass_the_strict_ray_io_v1_schema(source):
    manifest = _load(source)
    assert _schema_errors(manifest) == []
    filled = yaml.safe_load(_envsubst((CLUSTER / source).read_text(), "REGISTRY", "registry.example.com/t"))
    assert _schema_errors(filled) == []


@pytest.mark.parametrize("source", MANIFESTS)
def test_kuberay_manifests_pass_the_operators_admission_rules(source):
    manifest = _load(source)
    assert ADMISSION[manifest["kind"]](manifest) == []
    assert f"KubeRay operator {KUBERAY_VERSION}" in (CLUSTER / source).read_text()  # the version the rules follow


def test_the_strict_schema_rejects_what_a_cluster_would_not_take():
    job = _load("kuberay/rayjob-batch.yaml")
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    assert any("imagePullPolice" in e for e in _schema_errors(typo))  # deep inside the embedded PodSpec
    misnamed = copy.deepcopy(job)
    misnamed["spec"]["rayClusterSpec"]["workerGroupSpec"] = misnamed["spec"]["rayClusterSpec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in _schema_errors(misnamed))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert any("replicas" in e for e in _schema_errors(wrong_type))
    no_template = copy.deepcopy(job)
    del no_template["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert any("'template' is a required property" in e for e in _schema_errors(no_template))


def test_the_operator_rejects_labels_in_ray_start_params_and_unbounded_groups():
    service = _load("kuberay/rayservice.yaml")
    old_form = copy.deepcopy(service)  # how these manifests said it before KubeRay 1.5
    head = old_form["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParams"]["labels"] = "vlray.io/role=head"
    del head["labels"]
    assert ray_service_errors(old_form) == [
        "rayStartParams['labels'] is not supported for Head group; please use the top-level Labels field instead"]
    unbounded = copy.deepcopy(service)
    del unbounded["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"]
    assert any("must set both minReplicas and maxReplicas" in e for e in ray_service_errors(unbounded))
    job = _load("kuberay/rayjob-batch.yaml")
    job["metadata"]["name"] = "Vlray_Batch"
    job["spec"]["runtimeEnvYAML"] = "env_vars: [unclosed"
    errors = ray_job_errors(job)
    assert any("DNS1035" in e for e in errors) and any("RuntimeEnvYAML" in e for e in errors)


def _groups(cluster_spec: dict) -> dict[str, dict]:
    """Each group's role label and container: head and worker groups alike."""
    groups = {"head": cluster_spec["headGroupSpec"]} | {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}
    return {name: {"role": group["labels"][ROLE_LABEL], "container": group["template"]["spec"]["containers"][0]}
            for name, group in groups.items()}


def _check_cluster_spec(cluster_spec: dict, num_model_actors: int) -> None:
    assert cluster_spec["rayVersion"] == RAY_VERSION
    groups = _groups(cluster_spec)
    assert {g["role"] for g in groups.values()} <= ROLES and groups["head"]["role"] == "head"
    assert {g["container"]["image"] for g in groups.values()} == {IMAGE}
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
    assert args.model.startswith("/data/")


def test_the_image_names_a_registry_to_fill_in():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert '-t "$REGISTRY/vlray:0.1.0"' in dockerfile
    for source in MANIFESTS:
        text = (CLUSTER / source).read_text()
        assert "envsubst '$REGISTRY'" in text  # how the header says to apply it
        filled = _envsubst(text, "REGISTRY", "registry.example.com/team")
        images = {c["image"] for g in _groups(_cluster_spec(yaml.safe_load(filled))).values() for c in [g["container"]]}
        assert images == {"registry.example.com/team/vlray:0.1.0"}


@pytest.mark.parametrize("source", ["serve_config.yaml", "serve_config_cluster.yaml", "kuberay/rayservice.yaml"])
def test_serve_configs_validate_with_serves_schema_and_the_app_builder(source):
    document = _load(source)
    serve_config = yaml.safe_load(document["spec"]["serveConfigV2"]) if document.get("kind") else document
    schema = ServeDeploySchema.model_validate(serve_config)
    (application,) = schema.applications
    assert application.import_path == "jobs.serve:app"
    assert application.runtime_env == RUNTIME_ENV
    assert "num_gpus_per_replica" in application.args  # stated in every shipped config
    build_serve_app(application.args)  # what Serve calls with the args: unknown or bad values raise here
    if document.get("kind") == "RayService":
        _check_cluster_spec(document["spec"]["rayClusterConfig"], application.args["num_replicas"])


def test_the_cluster_serve_config_listens_beyond_loopback_and_reads_the_shared_path():
    cluster = _load("serve_config_cluster.yaml")
    assert cluster["http_options"]["host"] == "0.0.0.0"
    (args,) = [a["args"] for a in cluster["applications"]]
    assert args["model"].startswith("/data/models/") and args["num_gpus_per_replica"] == 1
    service = _load("kuberay/rayservice.yaml")
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == cluster  # the RayService carries it inline
    assert _load("serve_config.yaml")["http_options"]["host"] == "127.0.0.1"  # the one-machine variant
    assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # stated, with its cost, in the header


def test_ray_up_config_validates_with_rays_schema_once_the_ami_is_filled_in():
    text = (CLUSTER / "ray_up.yaml").read_text()
    config = yaml.safe_load(_envsubst(text, "VLRAY_AMI", "ami-0123456789abcdef0"))
    validate_config(prepare_config(config))  # the schema `ray up` checks, with its defaults filled in
    node_types = config["available_node_types"]
    roles = {name: node["labels"][ROLE_LABEL] for name, node in node_types.items()}
    assert roles == {"head": "head", "model": "model", "preprocess": "preprocess"} and set(roles.values()) <= ROLES
    assert node_types["head"]["resources"] == {"CPU": 0}
    assert node_types["model"]["min_workers"] < node_types["model"]["max_workers"]  # the autoscaler adds GPUs
    assert node_types["preprocess"]["min_workers"] >= 1  # else placement never sees the role
    raw = yaml.safe_load(text)
    assert {n["node_config"]["ImageId"] for n in raw["available_node_types"].values()} == {"${VLRAY_AMI}"}
    assert "latest_dlami" not in text.replace("`latest_dlami`", "")  # Ray's default: Ubuntu 18.04, glibc 2.27
    assert "base-oss-nvidia-driver-gpu-ubuntu-22.04" in text  # where VLRAY_AMI comes from


def _pinned_rays() -> dict[str, str]:
    """Every place cluster/ names a Ray version, by where."""
    pins = {"Dockerfile FROM": RAY_VERSION}
    for line in _load("ray_up.yaml")["setup_commands"] + [(CLUSTER / "Dockerfile").read_text()]:
        for spec in re.findall(r"'(ray\[[^']*\][^']*)'", line):
            requirement = Requirement(spec)
            (pin,) = requirement.specifier
            assert pin.operator == "==", spec
            pins[f"pip {spec}"] = pin.version
    for source in MANIFESTS:
        pins[source] = _cluster_spec(_load(source))["rayVersion"]
    return pins


def test_ray_is_pinned_to_one_version_everywhere():
    pins = _pinned_rays()
    assert len(pins) >= 5 and set(pins.values()) == {RAY_VERSION}, pins
    ray_dependency = re.search(r'"(ray\[[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert Requirement(ray_dependency).specifier.contains(RAY_VERSION), ray_dependency  # the range CI installs


def test_readme_says_what_the_files_are_for_and_what_to_fill_in():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out"):readme.index("## How it works")]
    for needed in (f"KubeRay {KUBERAY_VERSION}", f"Ray {RAY_VERSION}", "REGISTRY", "VLRAY_AMI", "/data/models",
                   "num_gpus_per_replica", "twice the GPUs", "serve_config_cluster.yaml", "--scale-timeout"):
        assert needed in section, needed
