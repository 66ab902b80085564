"""Shared fixtures: the tiny model (built once), a loaded copy, sample images, one local Ray per session, and a
temporary cache folder for the whole session."""

from __future__ import annotations

import os

# Before transformers, huggingface_hub or ray are imported: never reach a hub, keep Ray on 127.0.0.1 and off
# token auth (see ENVIRONMENT.md), and keep logs quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from vlray.config import EngineConfig  # noqa: E402
from vlray.model.loader import LoadedModel, load_model  # noqa: E402
from vlray.testing.sample_images import make_sample_images  # noqa: E402
from vlray.testing.tiny_model import build_tiny_model  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests on a multi-node Cluster of their own run last: a Cluster cannot share this process with the session's
    # local Ray, so their fixture shuts that down (a stable sort keeps every other order as it was).
    items.sort(key=lambda item: "multinode" in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Caches of every test (and of the Ray workers, which inherit the variable) go to a temporary folder."""
    folder = tmp_path_factory.mktemp("vlray-cache")
    previous = os.environ.get("VLRAY_CACHE_DIR")
    os.environ["VLRAY_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("VLRAY_CACHE_DIR", None)
    else:
        os.environ["VLRAY_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-vl")


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir: Path) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir), device_profile="cpu", default_max_tokens=12)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_config: EngineConfig) -> LoadedModel:
    return load_model(tiny_config)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """64x64 png, 320x240 jpg, 256x512 png, 640x480 jpg, 1024x768 png."""
    return make_sample_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, bound to 127.0.0.1."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
