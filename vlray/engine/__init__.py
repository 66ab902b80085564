"""The continuous-batching engine (scheduler, block manager, sequences, KV cache, sampler, token output) and what
drives any backend: the step interface (backend.py), the async engine and its request queue."""
