"""The `vlray` command: one front door to the server, the batch job, the benchmarks, the demo and the device plan.

    vlray serve MODEL [--host 127.0.0.1 --port 8000 ...]   the OpenAI-compatible server, until Ctrl-C
    vlray batch --model M --input I --output O ...         the Ray Data batch job
    vlray bench NAME ...                                   a benchmark (vlray bench --help lists them)
    vlray demo [--model M]                                 a few requests through a ModelWorker
    vlray plan MODEL [--gpu-memory 2GiB]                   where each part of the model would run
    vlray make-tiny-model DIR                              the tiny random Qwen3-VL the tests use

Each subcommand is the module Ray's own conventions run (`serve run jobs.serve:app`, `python -m jobs.batch`), so
both spellings take the same flags; `vlray COMMAND --help` lists them with their defaults.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

# name -> (module with main(argv, prog), one line of help). Modules are imported only when their command runs:
# `vlray --help` must not pay for torch and Ray.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("actors.serve.serve_command", "the OpenAI-compatible server on Ray Serve, until Ctrl-C"),
    "batch": ("actors.data.batch_job", "the batch job on Ray Data: a table or folder in, Parquet shards out"),
    "bench": ("jobs.bench.__main__", "the benchmarks (python -m jobs.bench)"),
    "demo": ("jobs.demo", "a few image and text requests through a ModelWorker on Ray"),
    "plan": ("vlray.model.plan_command", "the device plan for a GPU and RAM size, without loading weights"),
    "make-tiny-model": ("jobs.make_tiny_model", "write the tiny random Qwen3-VL used by tests and the demo"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # Each command parses its own flags (so its --help is its own); here it only needs to be listed.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def command_main(name: str) -> Callable[..., int | None]:
    return importlib.import_module(COMMANDS[name][0]).main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return int(command_main(argv[0])(argv[1:], prog=f"vlray {argv[0]}") or 0)
    build_parser().parse_args(argv)  # --help, or an unknown command: argparse says so and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
