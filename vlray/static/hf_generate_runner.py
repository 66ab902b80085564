"""Run one model batch through transformers `generate` and cut each row's output where it really ended."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from vlray.engine.generated_sequence import GeneratedSequence, finish_sequence
from vlray.engine.token_stream import DeltaSink
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.device_profile import DeviceProfile, attention_kernels
from vlray.static.generation_controls import RowSampler, RowStopper
from vlray.static.hf_row_streamer import RowStreamer
from vlray.static.model_batch import ModelBatch


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

    def generate(self, batch: ModelBatch, requests: Sequence[PreparedRequest],
                 sink: DeltaSink | None = None) -> list[GeneratedSequence]:
        """Run generate on a batch already on the device; one GeneratedSequence per row.

        With a sink, each row's text is also streamed to it as it is generated (see vlray/engine/token_stream.py)."""
        params = [r.sampling for r in requests]
        config = GenerationConfig(
            max_new_tokens=max(p.max_tokens for p in params),
            do_sample=False,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            disable_compile=not self.profile.allow_compile,
        )
        sampler = RowSampler(params, self.profile.device, batch.prompt_len, [r.num_prompt_tokens for r in requests])
        stopper = RowStopper(params, batch.prompt_len, self.tokenizer)
        with torch.inference_mode(), attention_kernels(self.profile):
            output = self.model.generate(
                **batch.model_inputs(),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]) if sampler.is_needed else None,
                stopping_criteria=StoppingCriteriaList([stopper]),
                streamer=RowStreamer(requests, self.eos_token_ids, self._decode, sink) if sink else None,
            )
        rows = output[:, batch.prompt_len:].cpu().tolist()
        return [finish_sequence(row, p, self.eos_token_ids, stopper.stopped_at[i], self._decode)
                for i, (row, p) in enumerate(zip(rows, params))]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
