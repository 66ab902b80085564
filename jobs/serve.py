"""vlray's OpenAI-compatible server on Ray Serve:

    serve run jobs.serve:app model=Qwen/Qwen3-VL-2B-Instruct [num_replicas=2] [max_batch_size=16] [...]
    serve deploy cluster/serve_config.yaml

Every option, with its default, is in vlray/serving/server_config.py; the README's "Serving" section shows them.
"""

from typing import Any

from ray.serve import Application

from actors.serve.deployment import build_app
from vlray.serving.server_config import ServerConfig


def app(args: dict[str, Any]) -> Application:
    """The app builder Serve calls with the command line's key=value pairs (or a config file's `args`)."""
    return build_app(ServerConfig.model_validate(args))
