"""The core of vlray, with no Ray in it: config, device profiles, loading, preprocessing, batching, generation."""
