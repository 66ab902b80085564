"""The Ray Serve deployment: each replica holds one model and serves the OpenAI API on it; `build_app` turns a
ServerConfig into a Serve application with the resources and queue limits that config implies.

The replica holds the engine in its own process (a replica is a Ray actor, with the GPU Ray gave it), rather
than calling a ModelWorker actor: streaming then needs no object-store hop per token, and a replica is healthy
exactly when its engine is.
"""

from __future__ import annotations

import logging
import os
import socket

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from actors.metrics import VlrayMetrics, publish_every
from actors.autoscaler import NotEnoughGpusError, autoscaler_view
from actors.placement import Placement, WorkerResources, plan_worker_resources, replica_actor_options, wants_gpus
from vlray.engine.async_engine import AsyncEngine
from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.llm import LLM
from vlray.model.loader import set_cpu_threads
from vlray.serving.app import build_openai_app
from vlray.serving.chat_service import ChatService
from vlray.serving.server_config import ServerConfig

logger = logging.getLogger(__name__)


@serve.deployment(name="vlray", health_check_period_s=10, graceful_shutdown_timeout_s=30)
@serve.ingress()
class OpenAIDeployment:
    """One Serve replica: the model, an AsyncEngine batching its concurrent requests, and the OpenAI routes."""

    def __init__(self, config: ServerConfig) -> None:
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        set_cpu_threads(max(1, int(granted)))  # Ray sets OMP_NUM_THREADS=1 in actors
        engine_config = config.engine_config()
        llm = LLM(engine_config)
        loaded = llm.loaded
        preprocessor = RequestPreprocessor(loaded.processor, loaded.max_model_len, engine_config.default_max_tokens,
                                           engine_config.max_input_pixels, image_policy=config.image_policy())
        engine = AsyncEngine(llm.backend, llm.stats, engine_config.max_batch_size, config.max_queued_requests,
                             config.batch_wait_ms / 1000, config.retry_after_s)
        self.service = ChatService(preprocessor, engine, config.model_name)
        self._stop_metrics = publish_every(VlrayMetrics("serve", config.model_name), lambda: llm.stats,
                                           lambda: engine.num_queued)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_openai_app(self.service)

    def check_health(self) -> None:
        """Serve restarts a replica whose generation thread has died."""
        if not self.service.engine.is_alive:
            raise RuntimeError("the generation thread has stopped")

    def __del__(self) -> None:
        self._stop_metrics.set()
        self.service.engine.close()


def replica_resources(config: ServerConfig, cluster: dict[str, float] | None = None,
                      can_autoscale: bool | None = None) -> WorkerResources:
    """The resources of one replica, and a log line that says where they come from.

    `num_gpus_per_replica` given: that, whatever is alive. Not given: one GPU per replica where the cluster has
    GPUs now (more replicas than GPUs only where an autoscaler can add them), else a share of the CPUs. The
    cluster is the connected Ray's, or this machine's when Ray is not started yet (`serve run` builds the app
    before it connects). On a cluster whose GPU nodes are still starting, as when KubeRay sends the Serve config
    once the head is up, that count is 0: the shipped cluster configs state the GPUs for that reason."""
    if config.num_gpus_per_replica is not None:
        resources = WorkerResources(num_cpus=config.num_cpus_per_replica or 1.0, num_gpus=config.num_gpus_per_replica)
        logger.info("vlray serve: %d replicas, %g GPUs each (num_gpus_per_replica)", config.num_replicas,
                    resources.num_gpus)
        return resources
    if cluster is None:
        cluster = Placement.of_cluster().model_node_resources() if ray.is_initialized() else _this_machine()
    engine_config = config.engine_config()
    short = wants_gpus(cluster, engine_config) and config.num_replicas > cluster.get("GPU", 0.0)
    if can_autoscale is None:
        can_autoscale = short and ray.is_initialized() and autoscaler_view().is_running
    try:
        resources = plan_worker_resources(cluster, config.num_replicas, engine_config, config.num_cpus_per_replica,
                                          can_autoscale)
    except NotEnoughGpusError:
        raise ValueError(f"num_replicas={config.num_replicas} asks for more GPUs than the cluster's "
                         f"{int(cluster.get('GPU', 0))}, and no autoscaler can add them: one model per GPU (or set "
                         "num_gpus_per_replica).") from None
    logger.warning("vlray serve: num_gpus_per_replica not set, so %d replicas get %g GPUs each, read off the GPUs "
                   "alive now (%d on the model nodes%s); if the cluster's GPU nodes are still starting, set "
                   "num_gpus_per_replica in the config", config.num_replicas, resources.num_gpus,
                   int(cluster.get("GPU", 0)), ", the autoscaler adds the rest" if short and can_autoscale else "")
    return resources


def build_app(config: ServerConfig) -> Application:
    """The Serve application for a config: replicas, their resources, and the bounded queues in front of them."""
    resources = replica_resources(config)
    return OpenAIDeployment.options(
        num_replicas=config.num_replicas,
        ray_actor_options=replica_actor_options(resources),
        # A replica takes what its engine can hold (a batch running, max_queued_requests waiting), so Serve routes
        # the rest to other replicas or holds it at the proxy; past the proxy's queue: 429 with Retry-After.
        max_ongoing_requests=config.max_batch_size + config.max_queued_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.retry_after_s),
    ).bind(config)


def run_local(config: ServerConfig, host: str = "127.0.0.1", port: int | None = None, name: str = "vlray") -> str:
    """Deploy the app on the Ray this process is connected to, its proxy on host:port (a free port when None),
    and wait until it answers; returns the base URL (tests and benchmarks use it)."""
    if port is None:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=name, route_prefix="/")
    return f"http://{host}:{port}"


def _this_machine() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
