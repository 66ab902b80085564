"""int4 weights x int8 dynamic activations on AVX2 CPUs (W4A8, the scheme of llama.cpp's Q4_1 x Q8_0): a small C
kernel (int4_avx2.c), compiled once with the machine's C compiler and loaded with ctypes.

Why a kernel of our own: PyTorch's only int4 CPU kernel (`_weight_int4pack_mm_for_cpu`) dequantises to bf16 and
multiplies in fp32, which on an AVX2-only CPU is compute-bound: one [6144 x 2048] projection at M=1, 2 threads,
took 1.06 ms, slower than fbgemm's int8 (0.62 ms) that reads twice the bytes, so int4 decoded at 0.6x of int8.
This kernel multiplies the 4-bit codes by int8 activations with AVX2's integer dot products and is bound by
memory instead (README, "Quantisation", has the figures). bitsandbytes' CPU NF4 took 17-30 ms, torchao 0.18 has
no x86 int4 layout, and `_dyn_quant_matmul_4bit` (KleidiAI, for ARM) falls back to 25 ms on x86.

The kernel is used when the CPU has AVX2, FMA and F16C and a C compiler with OpenMP is found (gcc or clang, as
on any Linux machine with build tools); it is built into the vlray cache folder on first use, keyed by its source.
Otherwise int4 falls back to PyTorch's kernel (Int4PackedLinear), with a warning saying why. VLRAY_INT4_KERNEL
chooses: `auto` (the default), `avx2` (fail if it cannot be built) or `aten` (PyTorch's kernel).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

GROUP_SIZE = 64  # input channels per scale and min (the C kernel's GROUP)
MAX_IN_FEATURES = 64 * 1024  # the C kernel's MAX_GROUPS groups
CHUNK_ROWS = 8192  # rows quantised at a time: no full-size fp32 temporaries for a 151936-row head
KERNEL_ENV = "VLRAY_INT4_KERNEL"
_SOURCE = Path(__file__).with_name("int4_avx2.c")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]


class KernelUnavailableError(RuntimeError):
    """The AVX2 int4 kernel cannot run here (CPU, compiler or VLRAY_INT4_KERNEL=aten); the message says why."""


def _cpu_supports_kernel() -> str | None:
    """None when the CPU can run the kernel, else why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU is {platform.machine()}, not x86-64"
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "the CPU's features cannot be read (/proc/cpuinfo)"
    missing = {"avx2", "fma", "f16c"} - flags
    return f"the CPU lacks {', '.join(sorted(missing))}" if missing else None


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        raise KernelUnavailableError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # then renamed: concurrent workers are safe
        built = Path(scratch) / target.name
        result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built)], capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelUnavailableError(f"{compiler} could not build {_SOURCE.name}: {result.stderr.strip()[-500:]}")
        os.replace(built, target)


@functools.lru_cache(maxsize=1)
def load_kernel() -> ctypes.CDLL:
    """The compiled kernel (built on first use); KernelUnavailableError saying why it cannot be had."""
    choice = os.environ.get(KERNEL_ENV, "auto")
    if choice not in ("auto", "avx2", "aten"):
        raise KernelUnavailableError(f"{KERNEL_ENV}={choice!r}: use auto, avx2 or aten")
    if choice == "aten":
        raise KernelUnavailableError(f"{KERNEL_ENV}=aten asks for PyTorch's kernel")
    if (why := _cpu_supports_kernel()) is not None:
        raise KernelUnavailableError(why)
    from vlray.config import default_cache_dir

    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    target = default_cache_dir() / "kernels" / f"int4_avx2-{digest}.so"
    if not target.exists():
        _compile(target)
    library = ctypes.CDLL(str(target))
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.vlray_int4_linear.argtypes = [pointer] * 6 + [i64, i64, i64, i32]
    library.vlray_int4_linear.restype = None
    return library


def _scratch_bytes(rows: int, in_features: int) -> int:
    """The kernel's activation scratch: int8 codes, and a scale and a sum per group (vlray_int4_scratch_bytes)."""
    return 4 * 2 * rows * (in_features // GROUP_SIZE) + rows * in_features


def kernel_available() -> bool:
    """Whether the kernel runs here; when it does not (and was not refused on purpose), say why once."""
    try:
        load_kernel()
        return True
    except KernelUnavailableError as exc:
        if os.environ.get(KERNEL_ENV, "auto") == "avx2":
            raise
        if os.environ.get(KERNEL_ENV) != "aten":
            _warn_once(str(exc))
        return False


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
    log.warning("int4 uses PyTorch's int4 kernel, which is compute-bound on AVX2: the AVX2 int4 kernel is "
                "unavailable because %s", reason)


def quantize_int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 [N, K/2] in the kernel's layout, scales fp16 [N, K/64], mins fp16 [N, K/64]) of an fp32
    weight [N, K]: per group of 64, w = q * scale + min with q = round((w - min) / scale) in 0..15."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low) / 15).clamp(min=2**-20).half()  # rounded first, so the codes fit the stored scale
    mins = low.half()
    codes = torch.round((groups - mins.float()[..., None]) / scales.float()[..., None]).clamp_(0, 15).to(torch.uint8)
    halves = codes.view(rows, cols // GROUP_SIZE, 2, 2, 16)  # [N, groups, half, (codes 0-15 | 16-31), 16]
    packed = halves[..., 0, :] | (halves[..., 1, :] << 4)  # byte j: code j (low nibble), code j + 16 (high)
    return packed.reshape(rows, cols // 2).contiguous(), scales, mins


class Int4Avx2Linear(nn.Module):
    """A drop-in for nn.Linear on the CPU: int4 weights (groups of 64, fp16 scale and min), int8 activations."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, in_features: int,
                 out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("codes", codes)  # [N, K/2] uint8
        # fp16 [N, K/64] kept as int16 bits, so that model.to(dtype) and .float() leave them as the kernel reads them
        self.register_buffer("scales", scales.view(torch.int16))
        self.register_buffer("mins", mins.view(torch.int16))
        self.register_buffer("bias", bias)  # [N] fp32 or None

    @classmethod
    def supports(cls, linear: nn.Linear) -> bool:
        return linear.in_features % GROUP_SIZE == 0 and linear.in_features <= MAX_IN_FEATURES

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Avx2Linear:
        if not cls.supports(linear):
            raise ValueError(f"the AVX2 int4 kernel needs in_features divisible by {GROUP_SIZE}, at most "
                             f"{MAX_IN_FEATURES}; got {linear.in_features}")
        weight = linear.weight.detach()
        parts = [quantize_int4_groups(weight[start : start + CHUNK_ROWS].to("cpu", torch.float32))
                 for start in range(0, weight.shape[0], CHUNK_ROWS)]
        codes, scales, mins = (torch.cat(column) for column in zip(*parts))
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        return cls(codes, scales, mins, linear.in_features, linear.out_features, bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight [N, K] the codes stand for (tests and quality measurements)."""
        rows = self.out_features
        halves = self.codes.view(rows, -1, 2, 16)
        codes = torch.stack([halves & 0x0F, halves >> 4], dim=-2).view(rows, -1, GROUP_SIZE).float()
        scales, mins = self.scales.view(torch.float16).float(), self.mins.view(torch.float16).float()
        return (codes * scales[..., None] + mins[..., None]).view(rows, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        rows = flat.shape[0]
        out = torch.empty(rows, self.out_features)
        # The scratch from torch's allocator too, not malloc inside the kernel: one allocator, one heap to reuse.
        scratch = torch.empty(_scratch_bytes(rows, self.in_features), dtype=torch.uint8)
        load_kernel().vlray_int4_linear(
            self.codes.data_ptr(), self.scales.data_ptr(), self.mins.data_ptr(), flat.data_ptr(), out.data_ptr(),
            scratch.data_ptr(), rows, self.out_features, self.in_features, torch.get_num_threads())
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def nbytes(self) -> int:
        """Bytes of the codes (half a byte per parameter) and the fp16 scales and mins."""
        return self.codes.numel() + 2 * (self.scales.numel() + self.mins.numel())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 weights (group "
                f"{GROUP_SIZE}), int8 activations, AVX2 kernel")
