"""Where a loaded model's components run: the executable form of a device plan.

A placement has two sides, `main` (the profile's device: the GPU, or the CPU alone) and `offload` (the CPU, in
fp32), and puts each component on one of them: the vision tower, the embedding lookup (with the rotary module),
the decoder layers (the first `num_main_layers` on main, the rest offloaded: llama.cpp's `-ngl`), and the final
norm with the LM head. Sampling stays on main. `place_model` moves the modules there and hooks the component
boundaries, so transformers' own forward (the engine's prefill) hands its hidden state across; the decode fast
path crosses the same boundaries itself (`DeviceMoves.to`). Every crossing is counted by boundary name, which is
what makes a split visible, and testable on a CPU-only machine, where both sides are the CPU (a "fake split":
the same hooks and moves, with copies that cost nothing).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlray.model.quantization.int8_embedding import Int8Embedding


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a placement: its device and the dtype its floating-point weights compute in."""

    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def carry_dtype(self) -> torch.dtype:
        """The hidden state's dtype between this side's layers: fp32 when its weights are fp16 (Qwen's residual
        overflows fp16; see fp16_residual), else the weights' dtype."""
        return torch.float32 if self.dtype == torch.float16 else self.dtype


@dataclass(frozen=True, slots=True)
class ModelPlacement:
    """Each component's side; `num_main_layers` None keeps every decoder layer on main."""

    main: Side
    offload: Side
    vision_offloaded: bool = False
    embeddings_offloaded: bool = False
    num_main_layers: int | None = None
    head_offloaded: bool = False

    @classmethod
    def single(cls, device: str | torch.device, dtype: torch.dtype) -> ModelPlacement:
        """Everything on one device: no boundary is crossed."""
        side = Side("main", torch.device(device), dtype)
        return cls(side, Side("offload", torch.device("cpu"), torch.float32))

    @classmethod
    def split(cls, main_device: str | torch.device, main_dtype: torch.dtype, *, vision_offloaded: bool = False,
              embeddings_offloaded: bool = False, num_main_layers: int | None = None,
              head_offloaded: bool | None = None, offload_dtype: torch.dtype = torch.float32) -> ModelPlacement:
        """A split between `main_device` and the CPU. The head follows the last layer unless told otherwise."""
        if num_main_layers is not None and num_main_layers < 0:
            raise ValueError(f"num_main_layers must be 0 or more; got {num_main_layers}")
        if head_offloaded is None:
            head_offloaded = num_main_layers is not None
        return cls(Side("main", torch.device(main_device), main_dtype), Side("offload", torch.device("cpu"),
                   offload_dtype), vision_offloaded, embeddings_offloaded, num_main_layers, head_offloaded)

    @property
    def is_split(self) -> bool:
        return (self.vision_offloaded or self.embeddings_offloaded or self.head_offloaded
                or self.num_main_layers is not None)

    def layer_side(self, index: int) -> Side:
        return self.main if self.num_main_layers is None or index < self.num_main_layers else self.offload

    @property
    def vision(self) -> Side:
        return self.offload if self.vision_offloaded else self.main

    @property
    def embeddings(self) -> Side:
        return self.offload if self.embeddings_offloaded else self.main

    @property
    def head(self) -> Side:
        return self.offload if self.head_offloaded else self.main

    def describe(self, num_layers: int) -> str:
        """One line: which component runs on which device."""
        main_layers = num_layers if self.num_main_layers is None else min(self.num_main_layers, num_layers)

        def where(side: Side) -> str:
            return f"{side.device} ({str(side.dtype).removeprefix('torch.')})"
        parts = [f"vision on {where(self.vision)}", f"embeddings on {where(self.embeddings)}"]
        if main_layers:
            parts.append(f"decoder layers 0-{main_layers - 1} on {where(self.main)}")
        if main_layers < num_layers:
            parts.append(f"decoder layers {main_layers}-{num_layers - 1} on {where(self.offload)}")
        parts.append(f"norm and LM head on {where(self.head)}")
        return ", ".join(parts)


class DeviceMoves:
    """Moves tensors to a side and counts each crossing (calls and bytes) under its boundary's name."""

    def __init__(self) -> None:
        self.crossings: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def to(self, value: Any, side: Side, boundary: str, dtype: torch.dtype | None = None) -> Any:
        """`value` (a tensor, or tuples/lists/dicts of them) on side's device; floating tensors in `dtype`
        (default: side's carry dtype). Counted once per call under `boundary`."""
        self.crossings[boundary] += 1
        return self._move(value, side.device, dtype or side.carry_dtype, boundary)

    def _move(self, value: Any, device: torch.device, dtype: torch.dtype, boundary: str) -> Any:
        if isinstance(value, torch.Tensor):
            self.bytes[boundary] += value.numel() * value.element_size()
            return value.to(device, dtype) if value.is_floating_point() else value.to(device)
        if isinstance(value, (tuple, list)):
            return type(value)(self._move(v, device, dtype, boundary) for v in value)
        if isinstance(value, dict):
            return {k: self._move(v, device, dtype, boundary) for k, v in value.items()}
        return value

    def reset(self) -> None:
        self.crossings.clear()
        self.bytes.clear()


def place_model(model: nn.Module, placement: ModelPlacement, moves: DeviceMoves) -> None:
    """Put each component of a Qwen3-VL model on its side and hook the boundaries transformers' forward crosses.

    Quantised modules keep their integer buffers (`.to(dtype)` converts floating-point tensors only)."""
    text = model.model.language_model
    model.model.visual.to(placement.vision.device, placement.vision.dtype)
    if placement.vision is not placement.main:  # generate() hands pixels over on main
        _hook_inputs(model.model.visual, placement.vision, moves,
                     f"main->{placement.vision.name} at the vision inputs", placement.vision.dtype)
    text.embed_tokens.to(placement.embeddings.device, placement.embeddings.dtype)
    text.rotary_emb.to(placement.embeddings.device)
    if placement.embeddings is not placement.main:  # callers hand token ids and positions over on main
        name = placement.embeddings.name
        _hook_inputs(text.embed_tokens, placement.embeddings, moves, f"main->{name} at the embeddings")
        _hook_inputs(text.rotary_emb, placement.embeddings, moves, f"main->{name} at the rotary positions",
                     placement.embeddings.dtype)
    # Every layer gets the rotary cos/sin and the mask made beside the embeddings: a layer on the other side
    # needs them there too, moved once per forward and side (`stash`) and reused by that side's later layers.
    stashes: dict[str, dict[str, tuple[Any, Any]]] = {}
    previous = placement.embeddings
    for index, layer in enumerate(text.layers):
        side = placement.layer_side(index)
        layer.to(side.device, side.dtype)
        boundary = f"{previous.name}->{side.name} at decoder layer {index}" if side is not previous else None
        if boundary is not None or side is not placement.embeddings:
            _hook_layer(layer, side, moves, boundary, stashes.setdefault(side.name, {}))
        previous = side
    text.norm.to(placement.head.device, placement.head.dtype)
    model.lm_head.to(placement.head.device, placement.head.dtype)
    if placement.head is not previous:
        _hook_inputs(text.norm, placement.head, moves, f"{previous.name}->{placement.head.name} at the final norm")
    if placement.head is not placement.main:  # the sampler (and generate's loop) work on main
        boundary = f"{placement.head.name}->main at the logits"
        model.lm_head.register_forward_hook(
            lambda _module, _args, logits: moves.to(logits, placement.main, boundary, torch.float32))
    for module in model.modules():  # an int8 lookup table dequantises to its side's dtype
        if isinstance(module, Int8Embedding):
            module.dtype = placement.embeddings.dtype


def _hook_inputs(module: nn.Module, side: Side, moves: DeviceMoves, boundary: str,
                 args_dtype: torch.dtype | None = None) -> None:
    """Before `module` runs, its tensor arguments (positional and keyword: the vision tower's grid_thw comes as
    one) go to `side`, floating ones in `args_dtype` (default: the side's carry dtype)."""
    def move_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return moves.to((args, kwargs), side, boundary, args_dtype)
    module.register_forward_pre_hook(move_inputs, with_kwargs=True)


def _hook_layer(layer: nn.Module, side: Side, moves: DeviceMoves, boundary: str | None,
                stash: dict[str, tuple[Any, Any]]) -> None:
    """Before a decoder layer runs: at a boundary, the hidden state comes over in the side's carry dtype; its
    shared keyword inputs (rotary cos/sin, mask, positions) come over in the side's compute dtype, once per
    forward for the whole side (`stash` keeps the original and its copy)."""
    shared_boundary = f"step inputs to {side.name}"

    def move_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if boundary is not None:
            args = moves.to(args, side, boundary)
        moved = {}
        for name, value in kwargs.items():
            if name == "hidden_states":
                moved[name] = value if boundary is None else moves.to(value, side, boundary)
            elif isinstance(value, (torch.Tensor, tuple, list)):
                kept = stash.get(name)
                if kept is None or kept[0] is not value:
                    kept = stash[name] = (value, moves.to(value, side, shared_boundary, side.dtype))
                moved[name] = kept[1]
            else:
                moved[name] = value
        return args, moved
    layer.register_forward_pre_hook(move_inputs, with_kwargs=True)
