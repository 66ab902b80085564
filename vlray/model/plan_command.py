"""`vlray plan MODEL --gpu-memory 2GiB` (and `python -m jobs.plan`): print the device plan without loading a
weight. The model's config is read from its folder (or a preset name) and built on the meta device."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from vlray.config_fields import HelpFormatter
from vlray.model.component_sizes import component_sizes
from vlray.model.device_plan import DEFAULT_CONTEXT_TOKENS, DevicePlan, NoPlanFitsError, plan_devices

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'2GiB', '1.5 GB', '512MiB', '3000000000' -> bytes; ValueError that shows the form otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size: write it like 2GiB, 1.5GB or 512MiB")
    return int(float(match.group(1)) * _UNITS[unit])


def system_ram_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_config(model: str) -> PretrainedConfig:
    """A model folder's config.json, a hub id in the local cache, or a preset name (qwen3_vl_2b_instruct)."""
    from vlray.model.presets import PRESET_NAMES, load_preset_config

    if model in PRESET_NAMES:
        return load_preset_config(model)
    if Path(model).expanduser().is_dir() or "/" in model:
        return AutoConfig.from_pretrained(str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model)
    raise ValueError(f"{model!r} is neither a model folder, a hub id, nor a preset ({', '.join(PRESET_NAMES)})")


def plan_for(model: str, gpu_memory: str | int | None = None, ram: str | int | None = None,
             context_tokens: int = DEFAULT_CONTEXT_TOKENS, max_pixels: int = 1024 * 1024,
             quantization: str = "auto") -> DevicePlan:
    """The plan for `model` with these budgets (sizes as bytes or strings like '2GiB'); no GPU: CPU-only."""
    gpu = parse_bytes(gpu_memory) if isinstance(gpu_memory, str) else gpu_memory
    ram_bytes = parse_bytes(ram) if isinstance(ram, str) else (ram or system_ram_bytes())
    sizes = component_sizes(read_config(model))
    return plan_devices(sizes, ram_bytes, gpu, context_tokens, max_pixels, quantization)


def log_device_plan(model_config: PretrainedConfig, model_dir: Path, profile, quantization: str, max_pixels: int,
                    log: logging.Logger) -> DevicePlan | None:
    """At load: the plan for this worker's device and quantisation setting, logged as a table; when nothing
    fits, a warning that names what would (the load goes on: the estimates are conservative)."""
    import torch

    gpu = None
    if profile.is_cuda:
        gpu, _ = torch.cuda.mem_get_info(torch.device(profile.device))
    pinned = quantization if quantization != "none" else "none"
    try:
        sizes = component_sizes(model_config)
        plan = plan_devices(sizes, system_ram_bytes(), gpu, max_pixels=max_pixels, quantization=pinned,
                            gpu_name=profile.device)
    except NoPlanFitsError as exc:
        log.warning("device plan: %s Try quantization='int4' (or `python -m jobs.plan %s`).", exc, model_dir)
        return None
    except (ValueError, OSError, AttributeError) as exc:  # a model family the planner does not know
        log.info("no device plan for %s: %s", model_dir, exc)
        return None
    log.info("device plan:\n%s", plan.table())
    return plan


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan command's arguments, for `vlray plan` and `python -m jobs.plan` alike."""
    parser.add_argument("model", help="model folder, hub id in the local cache, or preset (qwen3_vl_2b_instruct)")
    parser.add_argument("--gpu-memory", default=None, help="GPU memory to plan for, e.g. 2GiB (none: CPU only)")
    parser.add_argument("--ram", default=None, help="RAM to plan for, e.g. 16GiB (default: this machine's)")
    parser.add_argument("--context-tokens", type=int, default=DEFAULT_CONTEXT_TOKENS,
                        help="KV-cache tokens the plan must hold at least")
    parser.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest image, for prefill memory")
    parser.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "int4"])


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan; on no fit print why and return 1."""
    try:
        plan = plan_for(args.model, args.gpu_memory, args.ram, args.context_tokens, args.max_pixels,
                        args.quantization)
    except NoPlanFitsError as exc:
        print(f"no plan fits: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    budget = f"{args.gpu_memory} GPU" if args.gpu_memory else "CPU only"
    print(f"device plan for {args.model} ({budget}, {plan.ram_budget / 2**30:.1f} GiB RAM, "
          f"at least {plan.context_tokens:,} KV tokens):")
    print(plan.table())
    return 0


def main(argv: list[str] | None = None, prog: str = "vlray plan") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    add_plan_arguments(parser)
    return run_plan(parser.parse_args(argv))
