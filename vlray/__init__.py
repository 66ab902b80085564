"""vlray's public Python API in one import: `from vlray import InferencePipeline, EngineConfig`."""

from actors.inference_pipeline import InferencePipeline
from engine.config import EngineConfig
from engine.request import GenerationRequest, GenerationResult

__all__ = ["EngineConfig", "GenerationRequest", "GenerationResult", "InferencePipeline"]
