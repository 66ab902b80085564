"""How close quantised decoders come to fp32: per layer, the cosine similarity of the hidden states and the KL
divergence of the softmax of their logit lens (fp32's final norm and head applied to each layer's output), and
at the end the model's own logits (its quantised head included); on the tiny model, greedy tokens end to end
against fp32's. Random weights (the 2B config) make top-1 agreement say little; the distances still show how
much each form moves the computation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlray.model.quantization import quantize_model

PROMPT_TOKENS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=["tiny", "2b"], default="tiny")
    parser.add_argument("--methods", default="int8,int4")
    parser.add_argument("--layers", type=int, default=None, help="2b: only the first N decoder layers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)


@contextlib.contextmanager
def quantized(model: nn.Module, method: str) -> Iterator[None]:
    """The model with quantised layers swapped in, its own modules (and tying) put back afterwards."""
    text = model.model.language_model
    saved = {name: module for name, module in model.named_modules()
             if name.startswith("model.language_model.layers.") and isinstance(module, nn.Linear)}
    saved["lm_head"], embed = model.lm_head, text.embed_tokens
    ties = (model.config.tie_word_embeddings, model.config.text_config.tie_word_embeddings)
    quantize_model(model, method)
    try:
        yield
    finally:
        for name, module in saved.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module)
        text.embed_tokens = embed
        model.config.tie_word_embeddings, model.config.text_config.tie_word_embeddings = ties


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over tokens of KL(softmax(ref) || softmax(logits)), in nats."""
    return F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1), log_target=True,
                    reduction="batchmean").item()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over tokens of the cosine similarity of two [T, D] tensors."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).mean().item()


def layer_distances(model: nn.Module, ids: torch.Tensor, ref: tuple, head: nn.Module, norm: nn.Module
                    ) -> tuple[list[dict[str, float]], dict[str, float], tuple]:
    """(per layer cosine and logit-lens KL against `ref`, final-logit figures, this run's outputs)."""
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
        rows = []
        for index, (h_ref, h) in enumerate(zip(ref[0][1:], out.hidden_states[1:])):
            lens_ref, lens = head(norm(h_ref[0])), head(norm(h[0]))
            rows.append({"layer": index, "cosine": _cos(h_ref[0], h[0]), "kl": _kl(lens_ref, lens)})
        final = {"cosine": _cos(ref[1][0], out.logits[0]), "kl": _kl(ref[1][0], out.logits[0]),
                 "top1_agreement": (ref[1][0].argmax(-1) == out.logits[0].argmax(-1)).float().mean().item()}
    return rows, final, (out.hidden_states, out.logits)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.bench.quant_models import cpu_isa, load_quant_model

    torch.set_num_threads(args.threads)
    loaded, _ = load_quant_model("fp32", args.size, "cpu", args.layers)
    model = loaded.model
    generator = torch.Generator().manual_seed(0)
    vocab = min(1000, model.config.text_config.vocab_size) if args.size == "tiny" else model.config.text_config.vocab_size
    ids = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=generator)
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
    ref = (out.hidden_states, out.logits)
    head, norm = model.lm_head, model.model.language_model.norm  # fp32's, for every logit lens
    reference_tokens = greedy_tokens(loaded, model) if args.size == "tiny" else None
    figures: dict[str, Any] = {"size": args.size, "layers": args.layers, "isa": cpu_isa(), "prompt_tokens": PROMPT_TOKENS, "methods": {}}
    for method in args.methods.split(","):
        with quantized(model, method):
            rows, final, _ = layer_distances(model, ids, ref, head, norm)
            entry = {"layers": rows, "final": final}
            if args.size == "tiny":
                entry["greedy"] = greedy_agreement(reference_tokens, greedy_tokens(loaded, model))
        figures["methods"][method] = entry
        print_method(method, entry)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


GREEDY_PROMPTS = ["Hello", "Describe a busy street at night with many signs.", "Name three colours.",
                  "What is two plus two?", "Write a short poem about the sea.", "Count from one to ten."]


def greedy_tokens(loaded, model: nn.Module, max_new_tokens: int = 24) -> list[list[int]]:
    """Greedy new tokens of `generate` for each of GREEDY_PROMPTS, through the chat template."""
    tokens = []
    for prompt in GREEDY_PROMPTS:
        ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=max_new_tokens)
        tokens.append(out[0, ids.shape[1]:].tolist())
    return tokens


def greedy_agreement(reference: list[list[int]], tokens: list[list[int]]) -> dict[str, float]:
    """Share of positions equal, share of prompts equal throughout, mean length of the common prefix."""
    same = sum(a == b for ref, got in zip(reference, tokens) for a, b in zip(ref, got))
    total = sum(len(ref) for ref in reference)
    prefixes = [next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref))
                for ref, got in zip(reference, tokens)]
    return {"positions_equal": same / total, "prompts_identical": sum(r == t for r, t in zip(reference, tokens))
            / len(reference), "mean_common_prefix": sum(prefixes) / len(prefixes), "tokens_per_prompt": len(reference[0])}


def print_method(method: str, entry: dict[str, Any]) -> None:
    layers = entry["layers"]
    print(f"\n{method}: per layer (cosine of hidden states, KL of the logit lens in nats)")
    for row in layers:
        print(f"  layer {row['layer']:>2}  cosine {row['cosine']:.5f}  KL {row['kl']:.5f}")
    final = entry["final"]
    print(f"  final logits: cosine {final['cosine']:.5f}, KL {final['kl']:.5f}, top-1 agreement "
          f"{final['top1_agreement']:.3f}")
    if "greedy" in entry:
        print(f"  greedy tokens vs fp32: {entry['greedy']}")
