"""vlray's AVX2 int4 x int8 kernel against the fp32 layer and against its own dequantised weight, with the edge
values a hidden state can hold; and the choice between it and PyTorch's int4 kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlray.model.quantization import Int4Avx2Linear, Int4PackedLinear, int4_avx2_linear
from vlray.model.quantization.int4_avx2_linear import KERNEL_ENV, KernelUnavailableError, load_kernel

# Skipped only where the CPU itself cannot run it (not x86-64 with AVX2, FMA, F16C): with gcc present, a build
# failure fails these tests instead of hiding behind a skip.
pytestmark = pytest.mark.skipif(int4_avx2_linear._cpu_supports_kernel() is not None,
                                reason=f"the CPU cannot run the AVX2 kernel: {int4_avx2_linear._cpu_supports_kernel()}")


def _layer(k: int = 512, n: int = 384, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(k, n, bias=bias)
    nn.init.normal_(layer.weight, std=0.02)
    return layer


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture
def kernel_choice(monkeypatch):
    """Set VLRAY_INT4_KERNEL for one test; the kernel is looked up again before and after."""
    def choose(value: str) -> None:
        monkeypatch.setenv(KERNEL_ENV, value)
        load_kernel.cache_clear()
    yield choose
    monkeypatch.undo()
    load_kernel.cache_clear()


@pytest.mark.parametrize("rows", [1, 5, 130])
def test_matches_fp32_and_its_own_dequantised_weight(rows: int) -> None:
    layer = _layer()
    quantized = Int4Avx2Linear.from_linear(layer)
    x = torch.randn(2, rows, 512)
    out = quantized(x)
    assert out.shape == (2, rows, 384) and out.dtype == torch.float32
    # 16 levels per group of 64 weights: cosine >= 0.99 against fp32
    assert _cosine(out, layer(x)) >= 0.99
    # against the weight the codes stand for, only the int8 activations differ: under 2 % of the output's norm
    exact = nn.functional.linear(x, quantized.dequantized_weight(), layer.bias)
    assert (out - exact).norm() <= 0.02 * exact.norm()


def test_dequantised_weight_is_within_half_a_step_of_the_weight() -> None:
    layer = _layer(bias=False)
    quantized = Int4Avx2Linear.from_linear(layer)
    groups = layer.weight.detach().view(384, -1, 64)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # per group
    error = (quantized.dequantized_weight().view(384, -1, 64) - groups).abs()
    assert (error <= step[..., None] / 2 * 1.01 + 1e-4).all()  # (the scale and min are stored in fp16)
    assert quantized.nbytes() == 384 * 512 // 2 + 2 * 2 * 384 * 8


def test_edge_values_of_a_hidden_state() -> None:
    layer = _layer()
    quantized = Int4Avx2Linear.from_linear(layer)
    x = torch.zeros(5, 512)
    x[1] = torch.finfo(torch.float32).tiny  # the smallest normal float: quantises to zero, the output is the bias
    x[2] = 1e30  # huge but finite: no overflow in the int32 sums or the fp32 result
    x[3, 7] = -3.0  # one channel alone
    x[4] = torch.randn(512) * 1e-3
    out = quantized(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], layer.bias.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out[1], layer.bias.detach(), rtol=0, atol=1e-6)
    exact = nn.functional.linear(x.double(), quantized.dequantized_weight().double(), layer.bias.double())
    assert _cosine(out[2].double(), exact[2]) >= 0.9999
    torch.testing.assert_close(out[3].double(), exact[3], rtol=1e-3, atol=1e-6)  # one channel: exact in int8


def test_threads_do_not_change_the_result() -> None:
    quantized = Int4Avx2Linear.from_linear(_layer(k=1024, n=520))
    x = torch.randn(9, 1024)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = quantized(x)
        torch.set_num_threads(2)
        two = quantized(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_a_model_wide_cast_leaves_the_codes_and_scales_alone() -> None:
    quantized = Int4Avx2Linear.from_linear(_layer(bias=False))  # (a bias follows the model's dtype, as any float)
    x = torch.randn(3, 512)
    before = quantized(x)
    quantized.to(torch.float16).float()
    assert torch.equal(quantized(x), before)


def test_quantize_model_picks_the_kernel_and_falls_back_where_it_cannot(kernel_choice) -> None:
    kernel_choice("auto")
    assert isinstance(_quantized_layer(512), Int4Avx2Linear)
    assert isinstance(_quantized_layer(96), Int4PackedLinear)  # 96 is no multiple of 64: PyTorch's kernel (32)
    kernel_choice("aten")
    assert isinstance(_quantized_layer(512), Int4PackedLinear)
    kernel_choice("bogus")
    with pytest.raises(KernelUnavailableError, match="auto, avx2 or aten"):
        load_kernel()


def _quantized_layer(k: int) -> nn.Module:
    """One linear layer swapped by quantize_model's own choice (on the CPU: no capability)."""
    from vlray.model.quantization.quantize_model import QuantizationSummary, _swap_linear

    holder = nn.Module()
    holder.proj = _layer(k=k)
    _swap_linear(holder, "proj", "int4", lambda name: None, lambda name: None, QuantizationSummary("int4", "none"),
                 "text")
    return holder.proj


def test_a_failed_build_says_why(kernel_choice, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("VLRAY_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    kernel_choice("avx2")
    with pytest.raises(KernelUnavailableError, match="could not build"):
        load_kernel()
    kernel_choice("auto")
    assert int4_avx2_linear.kernel_available() is False  # and int4 then runs on PyTorch's kernel
