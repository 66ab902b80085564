"""Thin Ray wrappers around engine classes: the ModelWorker actor, its factory and the InferencePipeline facade."""
