"""Batch-job I/O without Ray: input discovery and reading, rows to requests and back, output shards, the report."""
