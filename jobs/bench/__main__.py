"""python -m jobs.bench <benchmark> [options]; `python -m jobs.bench --help` lists them."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from jobs.bench import cache_bench, generate_bench  # noqa: E402

BENCHMARKS = {
    "generate": (generate_bench, "batched generation vs plain generate one request at a time"),
    "cache": (cache_bench, "4 questions per image with the caches on vs off; weights-cache cold start"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    args = parser.parse_args(argv)
    BENCHMARKS[args.benchmark][0].run(args)


if __name__ == "__main__":
    main()
