"""Decode on a CUDA GPU: tokens/s at batch 1 and 32, with and without CUDA graphs, and the share of the card's
memory bandwidth reached at batch 1 (weight bytes read per token / time per token / bandwidth)."""

from __future__ import annotations

import time

import torch

from vlray.config import EngineConfig
from vlray.engine.runner.cuda_graphs import CudaGraphDecoder
from vlray.llm import LLM
from vlray.model.loader import LoadedModel

# Peak memory bandwidth, GB/s, by a substring of torch.cuda.get_device_name().
CARD_BANDWIDTH_GBS = {
    "H200": 4800, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "A100": 2039, "L4": 300, "T4": 320,
    "GTX 1080 Ti": 484, "GTX 1080": 320, "GTX 1070": 256, "GTX 1060": 192, "GTX 1050 Ti": 112, "GTX 1050": 112,
    "MX250": 48, "P100": 732,
}
CONTEXT_TOKENS = 256
STEPS = 50


def card_bandwidth_gbs(name: str) -> float | None:
    return next((bw for key, bw in CARD_BANDWIDTH_GBS.items() if key in name), None)


def decode_figures(loaded: LoadedModel, config: EngineConfig) -> dict:
    """Time decode steps of fixed batches against a filled cache, eager and graphed."""
    engine = LLM(config.with_updates(backend="engine", max_batch_size=32, cuda_graphs=False), loaded=loaded).backend
    block_size = engine.kv_cache.block_size
    blocks_per_seq = CONTEXT_TOKENS // block_size
    device = engine.device
    eager = engine.runner.decode
    graphed = CudaGraphDecoder(eager, 32, blocks_per_seq, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.model.language_model.parameters())
    weight_bytes += loaded.model.lm_head.weight.numel() * loaded.model.lm_head.weight.element_size()
    name = torch.cuda.get_device_name(device)
    figures: dict = {"card": name, "context_tokens": CONTEXT_TOKENS}
    for rows in (1, 32):
        tables = torch.arange(1, 1 + rows * blocks_per_seq, device=device).view(rows, blocks_per_seq)
        inputs = (torch.randint(0, 1000, (rows,), device=device),
                  torch.full((rows,), CONTEXT_TOKENS - 1, device=device),
                  tables[:, -1] * block_size + block_size - 1,
                  tables,
                  torch.full((rows,), CONTEXT_TOKENS, device=device))
        for label, decode in (("eager", eager), ("cuda_graphs", graphed)):
            with torch.inference_mode():
                for _ in range(3):
                    decode(*inputs)
                torch.cuda.synchronize(device)
                start = time.perf_counter()
                for _ in range(STEPS):
                    decode(*inputs)
                torch.cuda.synchronize(device)
            step_s = (time.perf_counter() - start) / STEPS
            figures[f"batch{rows}_{label}_tokens_per_s"] = rows / step_s
            if rows == 1:
                figures[f"batch1_{label}_ms_per_token"] = step_s * 1000
    bandwidth = card_bandwidth_gbs(name)
    if bandwidth:
        best = max(figures["batch1_eager_tokens_per_s"], figures["batch1_cuda_graphs_tokens_per_s"])
        figures["batch1_bandwidth_share"] = weight_bytes * best / (bandwidth * 1e9)
    print(f"decode on {name}, context {CONTEXT_TOKENS} tokens:")
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"  {key:<36}{value:12.3f}")
    return figures
