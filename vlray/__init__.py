"""vlray's Ray-free core: `from vlray import EngineConfig, GenerationRequest, GenerationResult`.

The Ray side (ModelWorker, InferencePipeline, the Serve app, the batch job) lives in the top-level `actors` package.
"""

from vlray.config import EngineConfig
from vlray.schema import GenerationRequest, GenerationResult

__all__ = ["EngineConfig", "GenerationRequest", "GenerationResult"]
