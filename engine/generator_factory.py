"""The generation path a config asks for: the continuous-batching engine (default) or static HF batches."""

from __future__ import annotations

from engine.batch_generator import BatchGenerator
from engine.config import EngineConfig
from engine.continuous_engine import ContinuousBatchingEngine
from engine.generator_base import GeneratorBase


def create_generator(config: EngineConfig, bucket: bool = True) -> GeneratorBase:
    """Load the model and wrap it in the backend the config names (`bucket` applies to the hf backend)."""
    if config.backend == "hf":
        return BatchGenerator.from_config(config, bucket=bucket)
    return ContinuousBatchingEngine.from_config(config)
