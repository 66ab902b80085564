"""Each quantised kernel against the fp32 layer it replaces, within a stated tolerance."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from vlray.model.quantization import Int4Avx2Linear, Int4PackedLinear, Int8DynamicLinear, Int8Embedding
from vlray.model.quantization.int4_avx2_linear import kernel_available
from vlray.model.quantization.nf4_linear import compute_dtype_for, int8_from_linear, nf4_from_linear

has_bnb = importlib.util.find_spec("bitsandbytes") is not None


def _layer(k: int = 512, n: int = 384, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(k, n, bias=bias)
    nn.init.normal_(layer.weight, std=0.02)
    if bias:
        nn.init.normal_(layer.bias, std=0.02)
    return layer


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


@pytest.mark.parametrize("rows", [1, 7, 130])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_dynamic_matches_fp32(rows: int, bias: bool) -> None:
    layer = _layer(bias=bias)
    x = torch.randn(2, rows, 512)
    ref, out = layer(x), Int8DynamicLinear.from_linear(layer)(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # int8 weights per channel, 7-bit dynamic activations: cosine >= 0.999, error under 3 % of the output's scale
    assert _cosine(out, ref) >= 0.999
    assert (out - ref).abs().max() <= 0.03 * ref.abs().max()


@pytest.mark.parametrize("kind", [Int8DynamicLinear, Int4PackedLinear, Int4Avx2Linear])
def test_a_rows_output_does_not_depend_on_its_batch(kind: type) -> None:
    """The engine decodes rows together, generate one at a time: each row's output must be bit-identical."""
    if kind is Int4Avx2Linear and not kernel_available():
        pytest.skip("the AVX2 int4 kernel does not run here")
    quantized = kind.from_linear(_layer(bias=True))
    x = torch.randn(9, 512)
    x[3] *= 50  # an outlier row must not change the others
    together = quantized(x)
    for row in range(9):
        assert torch.equal(quantized(x[row : row + 1])[0], together[row]), row
    assert torch.equal(quantized(x[2:6]), together[2:6])


def test_int8_weight_unpacks_to_the_rounded_weight() -> None:
    layer = _layer()
    codes, scales = Int8DynamicLinear.from_linear(layer).int8_weight()
    assert codes.dtype == torch.int8
    assert torch.allclose(codes.float() * scales[:, None], layer.weight, atol=scales.max().item() / 2 + 1e-7)


@pytest.mark.parametrize("rows", [1, 5, 128])
@pytest.mark.parametrize("group", [32, 128])
def test_int4_packed_matches_fp32(rows: int, group: int) -> None:
    layer = _layer(bias=True)
    x = torch.randn(rows, 512)
    quantized = Int4PackedLinear.from_linear(layer, group).to(torch.float32)  # a model-wide cast leaves it be
    out = quantized(x)
    # 16 levels per group of `group` weights, bf16 activations: cosine >= 0.99
    assert out.shape == (rows, 384) and out.dtype == torch.float32
    assert _cosine(out, layer(x)) >= 0.99


def test_int4_pads_rows_to_the_kernels_multiple() -> None:
    layer = _layer(n=765)
    x = torch.randn(2, 512)
    out = Int4PackedLinear.from_linear(layer)(x)
    assert out.shape == (2, 765) and _cosine(out, layer(x)) >= 0.99


def test_int4_packs_in_row_chunks_as_it_would_whole(monkeypatch) -> None:
    from vlray.model.quantization import int4_packed_linear

    layer = _layer(n=384)
    whole = Int4PackedLinear.from_linear(layer)
    monkeypatch.setattr(int4_packed_linear, "CHUNK_ROWS", 128)
    chunked = Int4PackedLinear.from_linear(layer)
    assert torch.equal(whole.packed, chunked.packed) and torch.equal(whole.scales_and_zeros, chunked.scales_and_zeros)


def test_int4_refuses_a_width_no_group_divides() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Int4PackedLinear.from_linear(nn.Linear(100, 64))


def test_int8_embedding_rows_within_half_a_step() -> None:
    table = nn.Embedding(1000, 64)
    quantized = Int8Embedding.from_embedding(table)
    ids = torch.tensor([[0, 5, 999], [3, 3, 1]])
    step = table.weight.abs().amax(1) / 127
    assert ((quantized(ids) - table(ids)).abs() <= step[ids].unsqueeze(-1) / 2 + 1e-6).all()


@pytest.mark.skipif(not has_bnb, reason="bitsandbytes (the cuda extra) is not installed")
def test_nf4_matches_fp32_on_cpu() -> None:
    """bitsandbytes' NF4 also runs on the CPU: the same module the CUDA path builds, checked here."""
    layer = _layer(bias=True)
    x = torch.randn(3, 512)
    quantized = nf4_from_linear(layer, "cpu", torch.float32)
    assert quantized.weight.dtype == torch.uint8
    assert _cosine(quantized(x), layer(x)) >= 0.99  # 4-bit NormalFloat, blocks of 64


def test_compute_dtype_is_fp32_on_pascal() -> None:
    assert compute_dtype_for((6, 1)) == torch.float32
    assert compute_dtype_for((7, 5)) == torch.float16 and compute_dtype_for((8, 9)) == torch.bfloat16


def test_llm_int8_refused_on_pascal_with_a_way_out() -> None:
    with pytest.raises(ValueError, match="int4"):
        int8_from_linear(_layer(), "cuda", (6, 1))


@pytest.mark.cuda
@pytest.mark.parametrize("rows", [1, 16])
def test_nf4_on_cuda_matches_fp32(rows: int) -> None:
    layer = _layer(bias=True)
    x = torch.randn(rows, 512)
    capability = torch.cuda.get_device_capability()
    quantized = nf4_from_linear(layer, "cuda", compute_dtype_for(capability))
    out = quantized(x.cuda().half())
    assert out.dtype == torch.float16 and _cosine(out.cpu(), layer(x)) >= 0.99
