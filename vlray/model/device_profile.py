"""Device profiles: which device, dtype and kernels a worker uses, chosen from the GPU's compute capability.

The choice is a pure function of the capability (and the installed PyTorch's kernel list), so it is tested
without a GPU by feeding it the numbers a GTX 1060 or an H100 would report.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlray.config import DeviceProfileName, DTypeName

Capability = tuple[int, int]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# What a Pascal user must install: PyTorch's CUDA 12.6 wheels are the last with sm_60/sm_61 kernels, and 2.14 the
# last release that builds them.
PASCAL_INSTALL_HINT = (
    "pip install 'torch==2.14.1' 'torchvision==0.29.1' --index-url https://download.pytorch.org/whl/cu126"
)


class UnsupportedDeviceError(RuntimeError):
    """The GPU, or the PyTorch build, cannot run this model; the message says what to install or change."""


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """How a worker runs the model on its device."""

    name: str
    """cpu, sm61 or modern."""
    device: str
    """A torch device string: cpu or cuda:N."""
    dtype: torch.dtype
    capability: Capability | None
    sdpa_backends: tuple[str, ...]
    """SDPA kernels allowed: Pascal has no FlashAttention (sm80+), so math and memory-efficient only."""
    allow_compile: bool
    """torch.compile emits Triton code, which needs sm70+."""
    use_pinned_memory: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        cap = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
        return f"{self.name} ({self.device}, {self.dtype_name}{cap})"


_SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "math": SDPBackend.MATH}


def attention_kernels(profile: DeviceProfile) -> contextlib.AbstractContextManager:
    """A context that limits SDPA to the profile's kernels on CUDA (math and memory-efficient on Pascal)."""
    if not profile.is_cuda:
        return contextlib.nullcontext()
    return sdpa_kernel([_SDPA_BACKENDS[name] for name in profile.sdpa_backends])


def select_profile(
    requested: DeviceProfileName,
    capability: Capability | None,
    dtype: DTypeName | None = None,
    device_index: int = 0,
) -> DeviceProfile:
    """Pick the profile for a device of this capability (None: no CUDA GPU), honouring an explicit request."""
    if requested == "auto":
        if capability is None:
            requested = "cpu"
        elif capability < (6, 0):
            raise UnsupportedDeviceError(
                f"GPU of compute capability {capability[0]}.{capability[1]} is older than Pascal (6.x), which "
                "vlray needs; run on the CPU with --device-profile cpu.")
        elif capability < (7, 0):
            requested = "sm61"
        else:
            requested = "modern"

    if requested == "cpu":
        chosen = _DTYPES[dtype] if dtype else torch.float32
        return DeviceProfile("cpu", "cpu", chosen, None, ("flash", "efficient", "math"), True, False)

    if capability is None:
        raise UnsupportedDeviceError(
            f"device profile {requested!r} needs a CUDA GPU and none was found; use --device-profile cpu.")
    has_bf16 = capability >= (8, 0)
    if dtype == "bfloat16" and not has_bf16:
        raise UnsupportedDeviceError(
            f"bfloat16 needs compute capability 8.0 or newer; this GPU is {capability[0]}.{capability[1]}. "
            "Use float16 (the default here) or float32.")
    device = f"cuda:{device_index}"
    if requested == "sm61":
        # Forcing sm61 on a newer GPU is allowed: it runs the Pascal code path (fp16, no compile, no flash).
        chosen = _DTYPES[dtype] if dtype else torch.float16
        return DeviceProfile("sm61", device, chosen, capability, ("efficient", "math"), False, True)
    if requested == "modern":
        chosen = _DTYPES[dtype] if dtype else (torch.bfloat16 if has_bf16 else torch.float16)
        allow_compile = capability >= (7, 0)
        return DeviceProfile("modern", device, chosen, capability, ("flash", "efficient", "math"),
                             allow_compile, True)
    raise ValueError(f"unknown device profile {requested!r}: use auto, cpu, sm61 or modern.")


def build_has_kernels_for(capability: Capability, arch_list: list[str]) -> bool:
    """Whether a PyTorch build compiled for `arch_list` (torch.cuda.get_arch_list()) runs on this capability.

    A cubin for sm_XY runs on sm_XZ with Z >= Y (same major); PTX for compute_XY is JIT-compiled for any
    newer capability.
    """
    major, minor = capability
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)
        if not match:
            continue
        kind, arch_major, arch_minor = match.group(1), int(match.group(2)), int(match.group(3))
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def check_torch_build(capability: Capability, arch_list: list[str], gpu_name: str = "this GPU",
                      torch_version: str = torch.__version__) -> None:
    """Fail with what to install when the installed PyTorch has no kernels for the GPU."""
    if build_has_kernels_for(capability, arch_list):
        return
    cap = f"{capability[0]}.{capability[1]}"
    built_for = ", ".join(arch_list) or "no CUDA architectures"
    hint = (f"Pascal GPUs need a CUDA 12.6 build of PyTorch below 2.15: {PASCAL_INSTALL_HINT}"
            if capability[0] == 6 else
            "Install a PyTorch build whose CUDA version supports it (https://pytorch.org/get-started/locally/).")
    raise UnsupportedDeviceError(
        f"PyTorch {torch_version} has kernels for {built_for}, none of which run on {gpu_name} (compute "
        f"capability {cap}). {hint}")


def detect_profile(requested: DeviceProfileName = "auto", dtype: DTypeName | None = None,
                   device_index: int = 0) -> DeviceProfile:
    """Look at the machine's GPU (if any), check the PyTorch build against it, and choose a profile."""
    capability: Capability | None = None
    if requested != "cpu" and torch.cuda.is_available():
        capability = torch.cuda.get_device_capability(device_index)
        check_torch_build(capability, torch.cuda.get_arch_list(), torch.cuda.get_device_name(device_index))
    return select_profile(requested, capability, dtype, device_index)
