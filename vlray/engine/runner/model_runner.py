"""The engine's device side: a SchedulerOutput in, next-token logits out (vLLM's ModelRunner).

It holds the KV cache's runners (prefill through the model's own forward, the decode fast path, its CUDA
graphs) and the pixel prefetcher, and encodes each step's new images in one packed vision-encoder call. It
never decides who runs: the scheduler did.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from vlray.config import EngineConfig
from vlray.engine.block_manager import BlockManager
from vlray.engine.image_encoder import ImageEncoder
from vlray.engine.kv_cache import KVCache
from vlray.engine.runner.cuda_graphs import CudaGraphDecoder
from vlray.engine.runner.decode import DecodeRunner, best_split
from vlray.engine.runner.pixel_prefetcher import PixelPrefetcher
from vlray.engine.runner.prefill import PrefillRunner, image_patches, images_to_encode
from vlray.engine.scheduler import SchedulerOutput
from vlray.engine.sequence import Sequence
from vlray.inputs.prepared_request import PreparedRequest
from vlray.model.device_profile import attention_kernels
from vlray.model.loader import LoadedModel
from vlray.model.vision_encoder import ImageFeatures
from vlray.stats import PipelineStats

# Decode CUDA graphs cover contexts up to this many tokens; longer ones run eagerly.
CUDA_GRAPH_MAX_CONTEXT = 8192
# Requests whose pixels are uploaded ahead of their prefill.
PREFETCH_AHEAD = 4


@dataclass(slots=True)
class ModelRunnerOutput:
    """What one step computed: the boundary from the model runner back to the engine (vLLM's ModelRunnerOutput)."""

    seqs: list[Sequence]  # the step's sequences, in the order of the logits' rows
    logits: torch.Tensor  # [len(seqs), V] float32, each sequence's next-token logits


class ModelRunner:
    """`run(scheduler_output)` -> ModelRunnerOutput; `add_request` / `release` keep its per-request inputs."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig, kv_cache: KVCache, block_manager: BlockManager,
                 encoder: ImageEncoder, stats: PipelineStats) -> None:
        profile = loaded.profile
        self.profile = profile
        self.kv_cache = kv_cache
        self.block_manager = block_manager
        self.encoder = encoder
        self.stats = stats
        self.prefill_runner = PrefillRunner(loaded.model, kv_cache, profile.device)
        decoder = DecodeRunner(loaded.model, kv_cache, loaded.placement, loaded.moves)
        self.decode = decoder.forward
        # A split step runs CPU layers between GPU kernels, which no CUDA graph can hold.
        self.graphed = profile.is_cuda and config.cuda_graphs and not loaded.placement.is_split
        if self.graphed:
            self.decode = CudaGraphDecoder(decoder.forward, config.max_batch_size,
                                           CUDA_GRAPH_MAX_CONTEXT // config.block_size, profile.device)
        vision = loaded.placement.vision  # pixels go where the vision tower runs
        self.prefetcher = PixelPrefetcher(vision.device, vision.dtype)
        self.device = torch.device(profile.device)
        self._requests: dict[int, PreparedRequest] = {}  # by seq_id
        self._rope_deltas: dict[int, int] = {}  # by seq_id, from its prefill: decode position n is n + delta

    def add_request(self, seq_id: int, prepared: PreparedRequest) -> None:
        self._requests[seq_id] = prepared

    def release(self, seq_id: int) -> None:
        """The sequence has ended or left: forget its inputs and any pixels uploaded for it."""
        self._requests.pop(seq_id, None)
        self._rope_deltas.pop(seq_id, None)
        self.prefetcher.drop(seq_id)

    def run(self, scheduled: SchedulerOutput) -> ModelRunnerOutput:
        """Prefill the step's newcomers and decode its running sequences, one next-token row each."""
        with self.stats.stage("transfer"):
            encode = {seq.seq_id: images_to_encode(seq) for seq in scheduled.prefills}
            pixels = {seq.seq_id: self.prefetcher.take(seq.seq_id, self._requests[seq.seq_id].pixel_values)
                      for seq in scheduled.prefills if encode[seq.seq_id]}
            decodes = list(scheduled.decodes)
            if not self.graphed:
                decodes.sort(key=len)  # for grouped attention (best_split); graphs take any order
            decode_inputs = self._decode_inputs(decodes) if decodes else None
        features = self._encode_prefill_images(scheduled.prefills, encode, pixels)
        with self.stats.stage("compute"), attention_kernels(self.profile), torch.inference_mode():
            rows = [self._prefill(seq, features.get(seq.seq_id)) for seq in scheduled.prefills]
            if decode_inputs is not None:
                if self.graphed:
                    rows.append(self.decode(*decode_inputs))
                else:
                    rows.append(self.decode(*decode_inputs,
                                            split_at=best_split([len(seq.block_table) for seq in decodes])))
            logits = torch.cat(rows)
        return ModelRunnerOutput(scheduled.prefills + decodes, logits)

    def prefetch(self, waiting: Iterable[Sequence]) -> None:
        """Start uploading the pixels of the next waiting requests, so their prefill does not wait for them."""
        for seq in itertools.islice(waiting, PREFETCH_AHEAD):
            pixels = self._requests[seq.seq_id].pixel_values
            if pixels is not None:
                self.prefetcher.prefetch(seq.seq_id, pixels)

    def _prefill(self, seq: Sequence, features: list[ImageFeatures] | None) -> torch.Tensor:
        """[1, V] next-token logits of one newcomer (its cached prefix skipped)."""
        self.stats.num_prefix_cached_tokens += seq.num_cached_tokens
        self.stats.num_batch_prompt_slots += len(seq) - seq.num_cached_tokens
        result = self.prefill_runner.run(seq, self._requests[seq.seq_id], features)
        self._rope_deltas[seq.seq_id] = result.rope_delta
        return result.logits.unsqueeze(0)

    def _encode_prefill_images(self, prefills: list[Sequence], encode: dict[int, list[int]],
                               pixels: dict[int, torch.Tensor]) -> dict[int, list[ImageFeatures]]:
        """Vision-encoder outputs of every image this step's prefills need, in one packed call, split back per
        sequence."""
        wanted = [seq for seq in prefills for _ in encode[seq.seq_id]]
        if not wanted:
            return {}
        parts, grids, hashes = [], [], []
        for seq in prefills:
            images = encode[seq.seq_id]
            if images:
                prepared = self._requests[seq.seq_id]
                patches, grid = image_patches(prepared, pixels[seq.seq_id], images)
                parts.append(patches)
                grids.append(grid)
                hashes += [prepared.image_hashes[i] for i in images]
        features = iter(self.encoder.encode(torch.cat(parts), torch.cat(grids), hashes))
        by_seq: dict[int, list[ImageFeatures]] = {}
        for seq in wanted:
            by_seq.setdefault(seq.seq_id, []).append(next(features))
        return by_seq

    def _decode_inputs(self, seqs: list[Sequence]) -> tuple[torch.Tensor, ...]:
        """Each sequence's last token, its 3-D rotary position, its cache slot, block table and length."""
        manager = self.block_manager
        width = max(len(s.block_table) for s in seqs)
        tables = np.zeros((len(seqs), width), dtype=np.int64)  # padding points at the scratch block
        for row, seq in enumerate(seqs):
            tables[row, : len(seq.block_table)] = seq.block_table
        host = [
            torch.tensor([s.last_token_id for s in seqs]),
            torch.tensor([len(s) - 1 + self._rope_deltas[s.seq_id] for s in seqs]),
            torch.tensor([manager.slot(s, len(s) - 1) for s in seqs]),
            torch.from_numpy(tables),
            torch.tensor([len(s) for s in seqs]),
        ]
        pin = self.device.type == "cuda"
        return tuple((t.pin_memory() if pin else t).to(self.device, non_blocking=pin) for t in host)
