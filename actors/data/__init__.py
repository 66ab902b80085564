"""The batch job on Ray Data: datasources, stages, the id registry, the stats collector and the job itself."""
