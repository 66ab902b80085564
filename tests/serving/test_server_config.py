"""The Serve app's arguments: command-line strings are read as their types, typos and bad values fail at
startup with the field named, the config file in cluster/ validates, and replicas get one GPU each."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from actors.placement import WorkerResources
from actors.serve.deployment import replica_resources
from jobs.serve import app
from vlray.serving.server_config import ServerConfig

CONFIG_FILE = Path(__file__).resolve().parents[2] / "cluster" / "serve_config.yaml"


def test_command_line_strings_are_typed():
    config = ServerConfig.model_validate({"model": "m", "num_replicas": "2", "allow_http_images": "true",
                                          "batch_wait_ms": "5", "image_root": "/srv/images"})
    assert (config.num_replicas, config.allow_http_images, config.batch_wait_ms) == (2, True, 5.0)
    assert config.model_name == "m" and config.model_copy(update={"served_model_name": "x"}).model_name == "x"
    policy = config.image_policy()
    assert policy.allow_http and policy.local_root == Path("/srv/images")
    assert config.engine_config().max_batch_size == config.max_batch_size


def test_defaults_read_no_local_file_and_fetch_nothing():
    policy = ServerConfig(model="m").image_policy()
    assert not policy.allow_local_files and not policy.allow_http


@pytest.mark.parametrize("args, fragment", [
    ({"model": "m", "max_batch_sise": 4}, "max_batch_sise"),
    ({"model": "m", "device_profile": "gpu"}, "device_profile"),
    ({"model": "m", "num_replicas": 0}, "num_replicas"),
    ({"model": "m", "max_pixels": 100, "max_model_len": 1}, "max_model_len"),
    ({}, "model"),
])
def test_bad_arguments_name_the_field(args, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ServerConfig.model_validate(args)


def test_the_config_file_is_a_valid_serve_config():
    raw = yaml.safe_load(CONFIG_FILE.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    [application] = schema.applications
    assert application.import_path == "jobs.serve:app"
    assert schema.http_options.host == "127.0.0.1"
    config = ServerConfig.model_validate(application.args)
    assert config.model == "Qwen/Qwen3-VL-2B-Instruct" and config.image_root is None
    assert isinstance(app(application.args), Application)


def test_one_gpu_per_replica_where_there_are_gpus():
    config = ServerConfig(model="m", num_replicas=2)
    assert replica_resources(config, {"CPU": 8, "GPU": 2}) == WorkerResources(num_cpus=1.0, num_gpus=1.0)
    assert replica_resources(config, {"CPU": 8}) == WorkerResources(num_cpus=4.0, num_gpus=0.0)
    cpu_only = config.model_copy(update={"device_profile": "cpu"})
    assert replica_resources(cpu_only, {"CPU": 8, "GPU": 2}).num_gpus == 0
    shared = config.model_copy(update={"num_gpus_per_replica": 0.5})
    assert replica_resources(shared, {"CPU": 8, "GPU": 1}) == WorkerResources(num_cpus=1.0, num_gpus=0.5)
    with pytest.raises(ValueError, match="num_replicas=2 asks for more GPUs than the cluster's 1"):
        replica_resources(config, {"CPU": 8, "GPU": 1})
