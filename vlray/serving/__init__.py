"""The OpenAI-compatible API without Ray: protocol, mapping, errors, chat service, FastAPI app, server config."""
