"""The content cache: a tiered store (memory, files, zstd files), its file format and its keys."""
