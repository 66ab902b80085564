"""Iteration-level scheduling: which sequences prefill and which decode at each step. Plain Python.

Each step, the running sequences decode one token each, oldest first; when the KV cache has no slot for one,
the newest running sequence is preempted (its blocks freed, its tokens kept: it is recomputed when it runs
again). Then waiting sequences are admitted in arrival order while the step's token budget, the seats
(max_num_seqs) and the free blocks allow; their prompts (less any cached prefix) prefill in the same step.
A finished sequence frees its seat and blocks at once, so a waiting one joins at the next step.

Samples of one prompt (n > 1, a `prefix_group`) are admitted one, then the rest: a sibling waits while another
sequence of its group is prefilling, so that it joins at the next step and takes the prompt's full blocks
(images included) from the prefix cache instead of computing them alongside. Its last, partial block is not
shared (only full blocks are keyed), so each sibling recomputes those few tokens, and the one it samples from.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vlray.engine.block_manager import BlockManager
from vlray.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """What one engine step runs: the boundary from the scheduler to the model runner (vLLM's SchedulerOutput)."""

    prefills: list[Sequence] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes


class Scheduler:
    """Waiting and running queues over one BlockManager."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order

    def fits_at_all(self, seq: Sequence) -> bool:
        """Whether the cache could ever hold seq to its last token (else it would wait forever)."""
        return self.block_manager.blocks_needed(seq.max_total_tokens) <= self.block_manager.num_blocks

    def add(self, seq: Sequence) -> None:
        if not self.fits_at_all(seq):
            raise ValueError(f"sequence {seq.seq_id} needs {seq.max_total_tokens} tokens of KV cache; the cache "
                             f"holds {self.block_manager.num_blocks * self.block_manager.block_size}")
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        step = SchedulerOutput()
        manager = self.block_manager
        candidates = list(self.running)
        while candidates:
            seq = candidates.pop(0)
            while not manager.can_append(seq):
                victim = candidates.pop() if candidates else seq
                self._preempt(victim)
                step.preempted.append(victim)
                if victim is seq:
                    break
            else:
                manager.append_slot(seq)
                step.decodes.append(seq)
        self.running = list(step.decodes)

        budget = self.max_num_batched_tokens - len(step.decodes)
        # Nothing new joins in a step that had to preempt: the cache is full.
        while self.waiting and not step.preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if self._waits_for_its_group(seq) or not manager.can_allocate(seq):
                break
            cost = len(seq) - len(manager.prefix_hits(seq)) * manager.block_size
            if cost > budget and not step.is_empty:  # one prompt over the budget still runs, alone
                break
            manager.allocate(seq)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            step.prefills.append(seq)
            budget -= cost
        return step

    def _waits_for_its_group(self, seq: Sequence) -> bool:
        """Whether seq should wait for a sibling of its prefix group that is prefilling now (admitted in this
        step: a prefill commits its blocks when the step ends): only while seq's own prefix is not yet all in
        the cache, so siblings that find it there join together. Without prefix caching nothing is shared."""
        if seq.prefix_group is None or not self.block_manager.enable_prefix_caching:
            return False
        if not any(s.prefix_group == seq.prefix_group and s.num_computed_tokens < s.num_prompt_tokens
                   for s in self.running):
            return False
        manager = self.block_manager
        return len(manager.prefix_hits(seq)) * manager.block_size < seq.cacheable_prefix_limit(manager.block_size)

    def finish(self, seq: Sequence) -> None:
        """seq is done: free its seat and blocks now."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.FINISHED

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
