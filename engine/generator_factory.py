"""The generation path a config asks for: the continuous-batching engine (default) or static HF batches."""

from __future__ import annotations

from engine.batch_generator import BatchGenerator
from engine.cache_keys import BlobCache
from engine.config import EngineConfig
from engine.continuous_engine import ContinuousBatchingEngine
from engine.generator_base import GeneratorBase


def create_generator(config: EngineConfig, bucket: bool = True, cache: BlobCache | None = None) -> GeneratorBase:
    """Load the model and wrap it in the backend the config names (`bucket` applies to the hf backend);
    `cache`: a shared cache (a CacheActor's client), else the config's own local one."""
    if config.backend == "hf":
        return BatchGenerator.from_config(config, bucket=bucket, cache=cache)
    return ContinuousBatchingEngine.from_config(config, cache=cache)
