"""Quantised weights: prompt tokens/s (one 512-token prefill), decode tokens/s at batch 1 and 8 through the
engine's decode fast path, and peak memory, for fp32, int8 and int4 on the CPU (bf16 too where the CPU has bf16
instructions), fp16 and NF4 on CUDA (the sm61 profile forced). Each variant runs in its own process, so each
peak RSS is its own; every figure is also given as a ratio against the baseline (fp32, or fp16 on CUDA) of the
same run, which is what to compare on a shared machine. The 2B model is built on the meta device and quantised
layer by layer, so its peak RSS is the quantised model's, not fp32's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from typing import Any

import torch

from jobs.bench.quant_models import cpu_has_bf16, cpu_isa, load_quant_model

CONTEXT_TOKENS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variants", default=None,
                        help="comma-separated; default fp32,bf16,int8,int4 on CPU (bf16 only with bf16 "
                             "instructions), fp16,nf4 on CUDA")
    parser.add_argument("--layers", type=int, default=None,
                        help="2b: keep only the first N of the 28 decoder layers (and N vision blocks): the 2B "
                             "shapes, the full vocabulary and LM head, in less time and memory")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target laptop: 2-4)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-steps", type=int, default=None, help="timed steps (default 32 tiny, 12 2b)")
    parser.add_argument("--cuda-graphs", action="store_true", help="on CUDA, decode through captured graphs too")
    parser.add_argument("--json", default=None)


def default_variants(device: str) -> list[str]:
    if device == "cuda":
        return ["fp16", "nf4"]
    return ["fp32"] + (["bf16"] if cpu_has_bf16() else []) + ["int8", "int4"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    variants = args.variants.split(",") if args.variants else default_variants(args.device)
    settings = {k: getattr(args, k) for k in ("size", "device", "threads", "prompt_tokens", "decode_steps",
                                              "cuda_graphs", "layers")}
    context = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {"size": args.size, "layers": args.layers, "device": args.device, "threads": args.threads,
                               "isa": cpu_isa(), "variants": {}}
    for variant in variants:
        with context.Pool(1) as pool:  # a fresh process per variant: its peak RSS is its own
            figures["variants"][variant] = pool.apply(measure_variant, (variant, settings))
        print(f"  {variant}: {json.dumps(figures['variants'][variant])}", flush=True)
    print_table(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


def measure_variant(variant: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Build the variant, then time a prefill and decode steps (runs in a child process)."""
    from vlray.config import EngineConfig
    from vlray.llm import build_backend
    from vlray.stats import PipelineStats
    from vlray.engine.runner.cuda_graphs import CudaGraphDecoder

    torch.set_num_threads(settings["threads"])
    start = time.perf_counter()
    loaded, summary = load_quant_model(variant, settings["size"], settings["device"], settings.get("layers"))
    build_s = time.perf_counter() - start
    device = torch.device(loaded.profile.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out: dict[str, Any] = {"build_s": round(build_s, 1), "quantized": summary}
    with torch.inference_mode():
        vocab = min(1000, loaded.model.config.text_config.vocab_size)
        ids = torch.randint(0, vocab, (1, settings["prompt_tokens"]), device=device)
        loaded.model(input_ids=ids[:, :32], logits_to_keep=1)  # warm-up
        sync()
        times = []
        for _ in range(2 if settings["size"] == "2b" else 5):
            begin = time.perf_counter()
            loaded.model(input_ids=ids, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - begin)
        out["prompt_tokens_per_s"] = ids.shape[1] / min(times)  # the fastest: others on the machine only slow it
    config = EngineConfig(model="in-memory", device_profile=loaded.profile.name, max_batch_size=8,
                          kv_cache_bytes=9 * CONTEXT_TOKENS * _kv_bytes_per_token(loaded), cuda_graphs=False)
    engine = build_backend(loaded, config, PipelineStats())
    steps = settings["decode_steps"] or (12 if settings["size"] == "2b" else 32)
    decoders = [("eager", engine.runner.decode)]
    if device.type == "cuda" and settings["cuda_graphs"]:
        blocks = CONTEXT_TOKENS // engine.kv_cache.block_size
        decoders.append(("graphs", CudaGraphDecoder(engine.runner.decode, 8, blocks, device)))
    for rows in (1, 8):
        inputs = _decode_inputs(rows, engine.kv_cache.block_size, device, vocab)
        for label, decode in decoders:
            with torch.inference_mode():
                for _ in range(2):
                    decode(*inputs)
                times = []
                for _ in range(steps):
                    sync()
                    begin = time.perf_counter()
                    decode(*inputs)
                    sync()
                    times.append(time.perf_counter() - begin)
            suffix = "" if label == "eager" else "_graphs"
            # the median step: a shared machine's other work lands on some steps, not on most
            out[f"decode_b{rows}{suffix}_tokens_per_s"] = rows / statistics.median(times)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["card"] = torch.cuda.get_device_name(device)
    return out


def _kv_bytes_per_token(loaded) -> int:
    text = loaded.model.config.text_config
    return 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * loaded.profile.dtype.itemsize


def _decode_inputs(rows: int, block_size: int, device: torch.device, vocab: int) -> tuple[torch.Tensor, ...]:
    """One decode step of `rows` sequences, each CONTEXT_TOKENS long, in their own blocks (from block 1)."""
    blocks = CONTEXT_TOKENS // block_size
    tables = torch.arange(1, 1 + rows * blocks, device=device).view(rows, blocks)
    return (torch.randint(0, vocab, (rows,), device=device), torch.full((rows,), CONTEXT_TOKENS - 1, device=device),
            tables[:, -1] * block_size + block_size - 1, tables, torch.full((rows,), CONTEXT_TOKENS, device=device))


def print_table(figures: dict[str, Any]) -> None:
    """Each variant's figures, and each as a ratio against the first variant (the baseline) of this run."""
    variants = figures["variants"]
    base_name = next(iter(variants))
    base = variants[base_name]
    keys = [k for k in ("prompt_tokens_per_s", "decode_b1_tokens_per_s", "decode_b1_graphs_tokens_per_s",
                        "decode_b8_tokens_per_s", "decode_b8_graphs_tokens_per_s", "peak_rss_gib", "peak_gpu_gib")
            if k in base]
    names = {"prompt_tokens_per_s": "prompt tok/s", "decode_b1_tokens_per_s": "decode b1 tok/s",
             "decode_b1_graphs_tokens_per_s": "b1 graphs tok/s", "decode_b8_tokens_per_s": "decode b8 tok/s",
             "decode_b8_graphs_tokens_per_s": "b8 graphs tok/s", "peak_rss_gib": "peak RSS GiB",
             "peak_gpu_gib": "peak GPU GiB"}
    where = variants[base_name].get("card") or f"CPU ({figures['isa']}, {figures['threads']} threads)"
    size = figures["size"] + (f" ({figures['layers']} of its decoder layers)" if figures.get("layers") else "")
    print(f"\nquant bench, {size} model on {where}; ratios against {base_name} of this run")
    header = f"{'variant':<8}" + "".join(f"{names[k]:>18}" for k in keys)
    print(header + "\n" + "-" * len(header))
    for name, row in variants.items():
        cells = "".join(f"{row[k]:>10.2f} ({row[k] / base[k]:4.2f}x)" if k in row else f"{'':>18}" for k in keys)
        print(f"{name:<8}{cells}")
