"""The device plan: where each part of the model runs and in what form, chosen from the config (on the meta
device) and the memory budgets before a weight is loaded, and printed as a table.

The order of preference on a GPU: everything in fp16; the vision tower on the CPU (fp32) when it and its
activations do not fit beside the decoder; NF4 decoder layers and LM head (bitsandbytes, runs on Pascal) when
fp16 does not fit; then llama.cpp's `-ngl` split, the first N layers on the GPU and the rest on the CPU (fp32
under fp16 layers, int4 under NF4 ones: each side quantised with its own kernel, as `split_loading` loads it). The embedding lookup stays on the CPU whenever the decoder is not wholly fp16 on the GPU (it reads a few
rows per step). On the CPU alone: fp32, else int8, else int4. Every plan keeps room for the CUDA context, the
activations of one prefill at max_pixels, and `context_tokens` of KV cache; when nothing does, NoPlanFitsError
says what was needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlray.model.component_sizes import ComponentSizes

GiB = 1024**3
MiB = 1024**2
CUDA_CONTEXT_BYTES = 300 * MiB
"""The CUDA context, cuBLAS workspace and the caching allocator's slack, measured at ~300 MB on Pascal."""
CPU_RUNTIME_BYTES = 1 * GiB
"""Python, torch, the tokenizer and processor, a request's pixels: what a CPU worker holds besides weights."""
DEFAULT_CONTEXT_TOKENS = 4096
PROMPT_TEXT_TOKENS = 512
"""Text tokens of one prefill beside its image's tokens, for the activation estimate."""


class NoPlanFitsError(ValueError):
    """No placement fits the budgets; the message gives the smallest need and the budgets."""


@dataclass(frozen=True, slots=True)
class Placement:
    """One component: where it runs, in what form, and its bytes."""

    component: str
    device: str
    form: str
    bytes: int
    note: str = ""


@dataclass(frozen=True)
class DevicePlan:
    """Every component's placement, the KV tokens that fit, and the budgets they were fitted in."""

    placements: list[Placement]
    quantization: str
    """The text decoder's quantisation on its main device: none, int8 or int4 (NF4 on CUDA)."""
    vision_device: str
    num_gpu_layers: int
    num_layers: int
    kv_tokens: int
    context_tokens: int
    gpu_budget: int | None
    ram_budget: int
    notes: list[str] = field(default_factory=list)

    def bytes_on(self, device_kind: str) -> int:
        """Total bytes planned on `cuda` or `cpu`."""
        return sum(p.bytes for p in self.placements if p.device.startswith(device_kind))

    def table(self) -> str:
        """The plan as a fixed-width table, with totals against the budgets."""
        rows = [("component", "device", "form", "size", "note")]
        rows += [(p.component, p.device, p.form, _size(p.bytes), p.note) for p in self.placements]
        if self.gpu_budget is not None:
            rows.append(("total GPU", "cuda", "", _size(self.bytes_on("cuda")), f"of {_size(self.gpu_budget)}"))
        rows.append(("total RAM", "cpu", "", _size(self.bytes_on("cpu")), f"of {_size(self.ram_budget)}"))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.2f} GiB" if num_bytes >= GiB // 4 else f"{num_bytes / MiB:.0f} MiB"


@dataclass(frozen=True, slots=True)
class _Option:
    """One candidate on the GPU: decoder form, vision placement, layers on the GPU."""

    form: str
    vision_on_gpu: bool
    gpu_layers: int


def plan_devices(sizes: ComponentSizes, ram_bytes: int, gpu_bytes: int | None = None,
                 context_tokens: int = DEFAULT_CONTEXT_TOKENS, max_pixels: int = 1024 * 1024,
                 quantization: str = "auto", gpu_name: str = "cuda:0") -> DevicePlan:
    """The first plan, in order of preference, that fits; `gpu_bytes` None plans for the CPU alone.
    `quantization` auto lets the plan choose; none, int8 or int4 pins the decoder's form (int4 is NF4 on CUDA)."""
    if quantization not in ("auto", "none", "int8", "int4"):
        raise ValueError(f"quantization must be auto, none, int8 or int4; got {quantization!r}")
    if context_tokens <= 0:
        raise ValueError(f"context_tokens must be positive; got {context_tokens}")
    if gpu_bytes is None:
        return _plan_cpu(sizes, ram_bytes, context_tokens, max_pixels, quantization)
    return _plan_gpu(sizes, ram_bytes, gpu_bytes, context_tokens, max_pixels, quantization, gpu_name)


def _cpu_forms(quantization: str) -> list[tuple[str, str]]:
    """(form name, quantization) for the CPU, preferred first."""
    forms = {"none": [("fp32", "none")], "int8": [("int8", "int8")], "int4": [("int4", "int4")]}
    return forms.get(quantization, [("fp32", "none"), ("int8", "int8"), ("int4", "int4")])


def _plan_cpu(sizes: ComponentSizes, ram: int, context: int, max_pixels: int, quantization: str) -> DevicePlan:
    prefill = max(sizes.text_prefill_bytes(sizes.image_tokens(max_pixels) + PROMPT_TEXT_TOKENS, 4),
                  sizes.vision_prefill_bytes(max_pixels, 4))
    kv_per_token = sizes.kv_bytes_per_token(4)
    needs = []
    for form, method in _cpu_forms(quantization):
        fixed = [
            Placement("vision tower", "cpu", "fp32", sizes.vision_bytes("fp32")),
            _embedding_placement(sizes, "cpu", "fp32" if method == "none" else "int8"),
            Placement(f"decoder layers 0-{sizes.num_layers - 1}", "cpu", form,
                      sizes.num_layers * sizes.layer_bytes(form, 4)),
            _head_placement(sizes, "cpu", form, shares_table=method == "none"),
            Placement("runtime", "cpu", "", CPU_RUNTIME_BYTES, "Python, torch, processor"),
            Placement("prefill activations", "cpu", "fp32", prefill, f"one image of {max_pixels:,} pixels"),
        ]
        used = sum(p.bytes for p in fixed)
        tokens = (ram - used) // kv_per_token
        needs.append((form, used + context * kv_per_token))
        if tokens >= context:
            kv = Placement("KV cache", "cpu", "fp32", tokens * kv_per_token, f"{tokens:,} tokens")
            return DevicePlan(fixed + [kv], method, "cpu", 0, sizes.num_layers, int(tokens), context, None, ram)
    raise NoPlanFitsError(_refusal("CPU RAM", ram, needs, context))


def _plan_gpu(sizes: ComponentSizes, ram: int, gpu: int, context: int, max_pixels: int, quantization: str,
              gpu_name: str) -> DevicePlan:
    forms = {"auto": ["fp16", "nf4"], "none": ["fp16"], "int4": ["nf4"], "int8": ["int8"]}[quantization]
    options = [_Option(form, vision, sizes.num_layers) for form in forms for vision in (True, False)]
    options += [_Option(forms[-1], False, n) for n in range(sizes.num_layers - 1, -1, -1)]
    needs = []
    for option in options:
        plan, need = _try_gpu(sizes, ram, gpu, context, max_pixels, option, gpu_name)
        needs.append((f"{option.form}, {option.gpu_layers} layers on the GPU", need))
        if plan is not None:
            return plan
    raise NoPlanFitsError(_refusal("GPU memory", gpu, needs[: len(forms) * 2], context)
                          + f" With the CPU's {_size(ram)} of RAM even 0 layers on the GPU did not fit.")


def _try_gpu(sizes: ComponentSizes, ram: int, gpu: int, context: int, max_pixels: int, option: _Option,
             gpu_name: str) -> tuple[DevicePlan | None, int]:
    """(the plan if it fits, the GPU bytes this option needs with `context` KV tokens)."""
    n, total = option.gpu_layers, sizes.num_layers
    whole_fp16 = option.form == "fp16" and n == total
    text_tokens = sizes.image_tokens(max_pixels) + PROMPT_TEXT_TOKENS
    gpu_prefill = sizes.text_prefill_bytes(text_tokens, 2) if n else 0
    cpu_prefill = sizes.text_prefill_bytes(text_tokens, 4) if n < total else 0
    if option.vision_on_gpu:
        gpu_prefill = max(gpu_prefill, sizes.vision_prefill_bytes(max_pixels, 2))
    else:
        cpu_prefill = max(cpu_prefill, sizes.vision_prefill_bytes(max_pixels, 4))
    # CPU layers: fp32 unless quantisation was chosen, then the same method with the CPU's kernel (as loaded)
    cpu_form = {"fp16": "fp32", "nf4": "int4", "int8": "int8"}[option.form]
    head_on_gpu = n == total
    head_form = option.form if head_on_gpu else cpu_form
    table_form = "fp16" if whole_fp16 else ("fp32" if cpu_form == "fp32" else "int8")
    parts = [
        Placement("vision tower", gpu_name if option.vision_on_gpu else "cpu",
                  "fp16" if option.vision_on_gpu else "fp32",
                  sizes.vision_bytes("fp16" if option.vision_on_gpu else "fp32"),
                  "" if option.vision_on_gpu else "outputs copied to the GPU"),
        _embedding_placement(sizes, gpu_name if whole_fp16 else "cpu", table_form),
    ]
    if n:
        parts.append(Placement(_layers_name(0, n), gpu_name, option.form, n * sizes.layer_bytes(option.form, 2)))
    if n < total:
        parts.append(Placement(_layers_name(n, total), "cpu", cpu_form, (total - n) * sizes.layer_bytes(cpu_form, 4),
                               "-ngl split: hidden state crosses once per step"))
    head_device = gpu_name if head_on_gpu else "cpu"
    parts.append(_head_placement(sizes, head_device, head_form, shares_table=table_form == head_form in ("fp16", "fp32")))
    parts.append(Placement("CUDA context", gpu_name, "", CUDA_CONTEXT_BYTES))
    if gpu_prefill:
        parts.append(Placement("prefill activations", gpu_name, "fp16", gpu_prefill,
                               f"one image of {max_pixels:,} pixels"))
    parts.append(Placement("runtime", "cpu", "", CPU_RUNTIME_BYTES, "Python, torch, processor"))
    if cpu_prefill:
        parts.append(Placement("prefill activations", "cpu", "fp32", cpu_prefill, "CPU-side components"))
    kv_gpu = sizes.kv_bytes_per_token_per_layer(2) * n
    kv_cpu = sizes.kv_bytes_per_token_per_layer(4) * (total - n)
    used_gpu = sum(p.bytes for p in parts if p.device == gpu_name)
    used_cpu = sum(p.bytes for p in parts if p.device == "cpu")
    unbounded = 1 << 40  # no KV on that device: only its weights must fit
    tokens_gpu = (gpu - used_gpu) // kv_gpu if kv_gpu else (unbounded if used_gpu <= gpu else -1)
    tokens_cpu = (ram - used_cpu) // kv_cpu if kv_cpu else (unbounded if used_cpu <= ram else -1)
    tokens = min(tokens_gpu, tokens_cpu)
    need = used_gpu + context * kv_gpu
    if tokens < context:
        return None, need
    if kv_gpu:
        parts.append(Placement("KV cache", gpu_name, "fp16", tokens * kv_gpu, f"{tokens:,} tokens, layers 0-{n - 1}"))
    if kv_cpu:
        parts.append(Placement("KV cache", "cpu", "fp32", tokens * kv_cpu, f"{tokens:,} tokens, layers {n}-{total - 1}"))
    quantization = {"fp16": "none", "nf4": "int4", "int8": "int8"}[option.form]
    notes = [] if n == total else [f"{total - n} of {total} decoder layers run on the CPU: decode is bound by the "
                                   "CPU's memory bandwidth for those layers"]
    return DevicePlan(parts, quantization, gpu_name if option.vision_on_gpu else "cpu", n, total, int(tokens),
                      context, gpu, ram, notes), need


def _layers_name(start: int, stop: int) -> str:
    return f"decoder layers {start}-{stop - 1}"


def _embedding_placement(sizes: ComponentSizes, device: str, form: str) -> Placement:
    return Placement("embeddings", device, form, sizes.embedding_bytes(form), "lookup (a few rows per step)")


def _head_placement(sizes: ComponentSizes, device: str, form: str, shares_table: bool) -> Placement:
    """The LM head; tied and in the table's form it costs nothing more."""
    if sizes.tied_head and shares_table:
        return Placement("LM head", device, form, 0, "tied: shares the embedding table")
    return Placement("LM head", device, form, sizes.head_bytes(form),
                     "its own quantised copy of the tied table" if sizes.tied_head else "")


def _refusal(what: str, budget: int, needs: list[tuple[str, int]], context: int) -> str:
    tried = "; ".join(f"{form}: {_size(need)}" for form, need in needs)
    return (f"nothing fits in {_size(budget)} of {what} with {context:,} tokens of KV cache and room for one "
            f"prefill. Needed: {tried}. Lower --context-tokens or max_pixels, or give more memory.")
