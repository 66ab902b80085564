"""The Ray Serve deployment of the OpenAI-compatible app, and its builder."""
