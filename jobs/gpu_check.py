"""python -m jobs.gpu_check (`make gpu-check`): what a lent GPU runs in one go, in under 8 minutes.

1. the CUDA-marked tests; 2. `jobs.bench quant --device cuda --cuda-graphs` on the 2B config: fp16 against NF4,
decode with and without CUDA graphs, peak GPU memory. The sm61 settings (fp16 weights, SDPA math and
memory-efficient kernels, no torch.compile) are forced whatever the card is, and every figure is printed with
the card's name. Each step has its own time limit, so one that hangs cannot take the whole budget.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

STEPS = [
    ("CUDA-marked tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests"], 200),
    ("quant bench on CUDA (sm61 forced): fp16 vs NF4, eager vs CUDA graphs",
     [sys.executable, "-m", "jobs.bench", "quant", "--size", "2b", "--device", "cuda", "--cuda-graphs",
      "--json", "gpu-check-quant.json"], 240),
]


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check (run it on a lent accelerator)")
        return 1
    name, capability = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    print(f"card: {name}, compute capability {capability[0]}.{capability[1]}, torch {torch.__version__}, "
          f"arch list {torch.cuda.get_arch_list()}", flush=True)
    failed = []
    for title, command, limit in STEPS:
        print(f"\n== {title} (limit {limit} s) on {name}", flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.run(command, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"== {title}: {'ok' if code == 0 else f'FAILED ({code})'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if code != 0:
            failed.append(title)
    print(f"\ngpu-check on {name}: " + ("all passed" if not failed else f"failed: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
