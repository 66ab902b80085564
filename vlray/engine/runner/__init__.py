"""The model runner: the device side of the engine (prefill, decode, CUDA graphs, pixel prefetch)."""
