"""Entry points (no engine logic): demo, make_tiny_model, bench; later batch and serve."""
