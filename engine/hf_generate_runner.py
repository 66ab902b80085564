"""Run one model batch through transformers `generate` and cut each row's output where it really ended."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from engine.device_profile import DeviceProfile
from engine.generation_controls import RowSampler, RowStopper
from engine.model_batch import ModelBatch
from engine.prepared_request import PreparedRequest, SamplingParams

_SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "math": SDPBackend.MATH}


@dataclass(slots=True)
class GeneratedSequence:
    """One row's output."""

    token_ids: list[int]
    text: str
    finish_reason: str  # stop or length


def finish_sequence(row_ids: Sequence[int], params: SamplingParams, eos_token_ids: set[int],
                    stopped_at: int | None, decode: Callable[[list[int]], str]) -> GeneratedSequence:
    """Cut a row of generate's output (which pads finished rows) to what the request produced.

    The row ended at the earliest of: its max_tokens, the step a stop string appeared (`stopped_at` tokens),
    its first EOS (kept in token_ids, as generate keeps it). Stop strings are cut from the text, OpenAI style.
    """
    ids = list(row_ids[: params.max_tokens])
    end, reason = len(ids), "length"
    if stopped_at is not None and stopped_at <= end:
        end, reason = stopped_at, "stop"
    first_eos = next((i for i, t in enumerate(ids[:end]) if t in eos_token_ids), None)
    if first_eos is not None:
        end, reason = first_eos + 1, "stop"
    ids = ids[:end]
    text = decode(ids)
    hits = [pos for pos in (text.find(s) for s in params.stop) if pos >= 0]
    if hits:
        text, reason = text[: min(hits)], "stop"
    return GeneratedSequence(ids, text, reason)


class HFGenerateRunner:
    """Generates for a ModelBatch with `model.generate`: the reference path every optimised path must match."""

    def __init__(self, model: PreTrainedModel, tokenizer, profile: DeviceProfile,
                 eos_token_ids: Sequence[int], pad_token_id: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.profile = profile
        self.eos_token_ids = set(eos_token_ids)
        self.pad_token_id = pad_token_id

    def transfer(self, batch: ModelBatch) -> ModelBatch:
        """Host -> device, through pinned memory on CUDA."""
        return batch.to(self.profile.device, self.profile.dtype, pin_memory=self.profile.use_pinned_memory)

    def generate(self, batch: ModelBatch, requests: Sequence[PreparedRequest]) -> list[GeneratedSequence]:
        """Run generate on a batch already on the device; one GeneratedSequence per row."""
        params = [r.sampling for r in requests]
        config = GenerationConfig(
            max_new_tokens=max(p.max_tokens for p in params),
            do_sample=False,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            disable_compile=not self.profile.allow_compile,
        )
        sampler = RowSampler(params, self.profile.device)
        stopper = RowStopper(params, batch.prompt_len, self.tokenizer)
        with torch.inference_mode(), self._attention_kernels():
            output = self.model.generate(
                **batch.model_inputs(),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]) if sampler.is_needed else None,
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        rows = output[:, batch.prompt_len:].cpu().tolist()
        return [finish_sequence(row, p, self.eos_token_ids, stopper.stopped_at[i], self._decode)
                for i, (row, p) in enumerate(zip(rows, params))]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _attention_kernels(self) -> contextlib.AbstractContextManager:
        if not self.profile.is_cuda:
            return contextlib.nullcontext()
        return sdpa_kernel([_SDPA_BACKENDS[name] for name in self.profile.sdpa_backends])
