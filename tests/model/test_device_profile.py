"""Device profile choice and the PyTorch build check, fed the numbers real GPUs report (no GPU needed)."""

import pytest
import torch

from vlray.model.device_profile import (
    UnsupportedDeviceError,
    build_has_kernels_for,
    check_torch_build,
    select_profile,
)

# torch.cuda.get_arch_list() of PyTorch's cu126 and cu130 wheels.
CU126_ARCHS = ["sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def test_pascal_gets_fp16_without_bf16_flash_or_compile():
    profile = select_profile("auto", (6, 1))
    assert profile.name == "sm61"
    assert profile.device == "cuda:0"
    assert profile.dtype == torch.float16
    assert "flash" not in profile.sdpa_backends
    assert set(profile.sdpa_backends) == {"efficient", "math"}
    assert profile.allow_compile is False
    assert profile.use_pinned_memory is True


def test_pascal_refuses_bf16():
    with pytest.raises(UnsupportedDeviceError, match="bfloat16 needs compute capability 8.0"):
        select_profile("auto", (6, 1), dtype="bfloat16")


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_modern_gpus_use_bf16_from_ampere(capability, dtype):
    profile = select_profile("auto", capability)
    assert profile.name == "modern"
    assert profile.dtype == dtype
    assert profile.allow_compile is True


def test_no_gpu_means_cpu_fp32():
    profile = select_profile("auto", None)
    assert (profile.name, profile.device, profile.dtype) == ("cpu", "cpu", torch.float32)
    assert profile.use_pinned_memory is False


def test_overrides_are_honoured():
    assert select_profile("cpu", (9, 0)).device == "cpu"
    forced = select_profile("sm61", (9, 0), device_index=1)
    assert (forced.name, forced.dtype, forced.device) == ("sm61", torch.float16, "cuda:1")
    assert select_profile("cpu", None, dtype="bfloat16").dtype == torch.bfloat16


def test_gpu_profile_without_gpu_says_what_to_do():
    with pytest.raises(UnsupportedDeviceError, match="--device-profile cpu"):
        select_profile("sm61", None)


def test_pre_pascal_gpu_is_refused():
    with pytest.raises(UnsupportedDeviceError, match="older than Pascal"):
        select_profile("auto", (5, 2))


def test_arch_list_matching():
    assert build_has_kernels_for((6, 1), CU126_ARCHS)
    assert build_has_kernels_for((6, 1), ["sm_60"])  # same major, older minor: binary compatible
    assert build_has_kernels_for((6, 1), ["compute_50"])  # PTX is JIT-compiled for newer GPUs
    assert not build_has_kernels_for((6, 1), CU130_ARCHS)
    assert not build_has_kernels_for((6, 1), ["sm_62"])
    assert build_has_kernels_for((9, 0), CU130_ARCHS)
    assert build_has_kernels_for((8, 9), CU130_ARCHS)  # sm_86 cubin runs on 8.9


def test_pascal_with_a_new_build_names_the_build_to_install():
    with pytest.raises(UnsupportedDeviceError) as info:
        check_torch_build((6, 1), CU130_ARCHS, "NVIDIA GeForce GTX 1060 6GB", torch_version="2.14.1+cu130")
    message = str(info.value)
    assert "GTX 1060" in message and "6.1" in message and "2.14.1+cu130" in message
    assert "download.pytorch.org/whl/cu126" in message
    assert "below 2.15" in message


def test_supported_build_passes():
    check_torch_build((6, 1), CU126_ARCHS)
    check_torch_build((9, 0), CU130_ARCHS)
