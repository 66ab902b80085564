"""The static path: bucketed batches through transformers `generate` behind the engine's step interface, the
reference the engine is checked against."""
