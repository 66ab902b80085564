"""`vlray serve MODEL [--host 127.0.0.1 --port 8000 ...]`: the OpenAI server on Ray Serve, in the foreground until
Ctrl-C (SIGINT) or SIGTERM, as `vllm serve` and `llama-server` are.

Every flag comes from ServerConfig (the server's settings and every EngineConfig field), so the command, `serve run
jobs.serve:app key=value ...` and a Serve config file's `args` take the same settings with the same defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from vlray.config_fields import HelpFormatter, add_config_arguments
from vlray.serving.server_config import ServerConfig

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_parser(prog: str = "vlray serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("model", help="model folder, or a hub id already in the local Hugging Face cache")
    where = parser.add_argument_group("where it listens, and on which Ray")
    where.add_argument("--host", default=DEFAULT_HOST,
                       help="address the HTTP proxy binds (0.0.0.0 to be reached from other machines)")
    where.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the HTTP proxy")
    where.add_argument("--ray-address", default=None,
                       help="Ray to run on: 'auto' (a running cluster), 'local' (a new one), host:port; default: "
                            "RAY_ADDRESS, else a cluster started with `ray start`, else a new local one")
    where.add_argument("--app-name", default="vlray", help="the Serve application's name")
    # The model is the positional argument; every other ServerConfig field is a flag with its default.
    add_config_arguments(parser.add_argument_group("server and engine (ServerConfig)"), ServerConfig,
                         exclude={"model"})
    return parser


def config_of(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig the flags give; ValueError (pydantic's, naming the field) when one is wrong."""
    values = vars(args)
    return ServerConfig.model_validate({name: values[name] for name in ServerConfig.model_fields if name in values})


def main(argv: list[str] | None = None, prog: str = "vlray serve") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_of(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Ray on this machine binds to 127.0.0.1 and writes no auth token (README, "Ray on one machine").
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from actors.serve.deployment import run_local

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=True)
    try:
        url = run_local(config, host=args.host, port=args.port, name=args.app_name)
        print(f"vlray: serving {config.model_name} at {url}/v1 (Ctrl-C stops)", flush=True)
        while not stop.wait(1.0):
            pass
        print("vlray: stopping", flush=True)
    finally:
        # Only this app: on a cluster that runs other Serve apps, they stay (a Ray this started ends with it).
        serve.delete(args.app_name)
        ray.shutdown()
    return 0

