"""CUDA paths (run only where there is a GPU): CUDA graphs replay the eager decode exactly, pixels arrive through
the pinned copy stream intact, and the engine on the GPU gives plain generate's greedy tokens (fp32)."""

import numpy as np
import pytest
import torch

from vlray.engine.runner.cuda_graphs import CudaGraphDecoder
from vlray.engine.runner.pixel_prefetcher import PixelPrefetcher
from vlray.llm import LLM
from vlray.model.loader import load_model
from vlray.testing.reference import reference_generate

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def gpu_loaded(tiny_config):
    return load_model(tiny_config.with_updates(device_profile="modern", dtype="float32"))


def test_cuda_graph_replay_equals_eager_decode(gpu_loaded, tiny_config):
    config = tiny_config.with_updates(device_profile="modern", dtype="float32", cuda_graphs=False,
                                      kv_cache_bytes=16 << 20)
    runner = LLM(config, loaded=gpu_loaded).backend.runner
    eager = runner.decode
    graphed = CudaGraphDecoder(eager, 8, 16, runner.device)
    device = runner.device
    for rows, blocks in [(1, 1), (3, 5), (8, 16)]:
        tables = torch.arange(1, 1 + rows * blocks, device=device).view(rows, blocks)
        inputs = (torch.randint(0, 500, (rows,), device=device), torch.full((rows,), blocks * 16 - 1, device=device),
                  tables[:, -1] * 16 + 15, tables, torch.full((rows,), blocks * 16, device=device))
        with torch.inference_mode():
            torch.testing.assert_close(graphed(*inputs).clone(), eager(*inputs))
    assert graphed.num_replays == 3


def test_pinned_prefetch_delivers_the_same_pixels():
    prefetcher = PixelPrefetcher("cuda:0", torch.float16)
    pixels = np.random.default_rng(0).standard_normal((300, 1536)).astype(np.float32)
    prefetcher.prefetch(7, pixels)
    on_device = prefetcher.take(7, pixels)
    assert on_device.device.type == "cuda" and on_device.dtype == torch.float16
    torch.testing.assert_close(on_device.float().cpu(), torch.from_numpy(pixels).half().float())


def test_engine_on_gpu_equals_plain_generate(gpu_loaded, tiny_config, sample_images):
    config = tiny_config.with_updates(device_profile="modern", dtype="float32", kv_cache_bytes=64 << 20)
    engine = LLM(config, loaded=gpu_loaded)
    requests = [{"id": "img", "prompt": "What is it?", "images": [str(sample_images[1])], "max_tokens": 16},
                {"id": "txt", "prompt": "Hello there", "max_tokens": 24}]
    for request, result in zip(requests, engine.generate(requests)):
        assert result.token_ids == reference_generate(gpu_loaded, request, 16)
