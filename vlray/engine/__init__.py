"""The continuous-batching engine: scheduler, block manager, sequences, KV cache, sampler, token output, async engine, request queue."""
