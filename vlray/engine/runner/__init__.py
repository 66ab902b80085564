"""The model runner: the device side of the engine (model_runner.py over prefill, decode, CUDA graphs, pixel
prefetch)."""
