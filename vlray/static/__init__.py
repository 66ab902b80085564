"""The static path: bucketed batches through transformers `generate`, the reference the engine is checked against."""
