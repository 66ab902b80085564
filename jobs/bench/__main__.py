"""python -m jobs.bench <benchmark> [options]; `python -m jobs.bench --help` lists them."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from jobs.bench import (  # noqa: E402
    batch_bench, cache_bench, cluster_bench, engine_bench, generate_bench, quant_bench, quant_quality, serve_bench)
from vlray.config_fields import HelpFormatter  # noqa: E402

BENCHMARKS = {
    "generate": (generate_bench, "batched generation vs plain generate one request at a time"),
    "engine": (engine_bench, "continuous batching vs generate (static batches, one at a time), TTFT too"),
    "batch": (batch_bench, "the Ray Data batch job vs plain generate one row at a time"),
    "serve": (serve_bench, "the OpenAI server: 1, 4, 16 concurrent clients; 16 concurrent vs 16 sequential"),
    "cache": (cache_bench, "4 questions per image with the caches on vs off; weights-cache cold start"),
    "cluster": (cluster_bench, "the batch job on one and on two simulated model nodes"),
    "quant-quality": (quant_quality, "int8 / int4 against fp32: per-layer cosine and KL, tiny-model greedy tokens"),
    "quant": (quant_bench, "fp32 / int8 / int4 on CPU (fp16 / NF4 on CUDA): prompt and decode tok/s, peak memory"),
}


def main(argv: list[str] | None = None, prog: str = "python -m jobs.bench") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=HelpFormatter))
    args = parser.parse_args(argv)
    BENCHMARKS[args.benchmark][0].run(args)


if __name__ == "__main__":
    main()
