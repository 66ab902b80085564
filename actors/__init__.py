"""Everything that imports Ray: ModelWorker, the CacheActor and its client, the worker factory and fan-out,
InferencePipeline, placement (and the autoscaler requests it makes) and metrics; serve/ (the Serve deployment)
and data/ (the batch job on Ray Data)."""
