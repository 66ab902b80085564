"""The generation path a config asks for: the continuous-batching engine (default) or static HF batches."""

from __future__ import annotations

from vlray.cache.keys import BlobCache
from vlray.config import EngineConfig
from vlray.engine.continuous_engine import ContinuousBatchingEngine
from vlray.engine.generator_base import GeneratorBase
from vlray.static.static_engine import BatchGenerator


def create_generator(config: EngineConfig, bucket: bool = True, cache: BlobCache | None = None) -> GeneratorBase:
    """Load the model and wrap it in the backend the config names (`bucket` applies to the hf backend);
    `cache`: a shared cache (a CacheActor's client), else the config's own local one."""
    if config.backend == "hf":
        return BatchGenerator.from_config(config, bucket=bucket, cache=cache)
    return ContinuousBatchingEngine.from_config(config, cache=cache)
