"""fp16 (Pascal's dtype) without inf or NaN: a residual stream pushed past fp16's range overflows in plain
transformers and stays finite with vlray's fp32 residual, in prefill and in the engine's decode path; and the
full-size 2B config with random weights runs in fp16 with finite logits throughout."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlray.config import EngineConfig
from vlray.llm import LLM
from vlray.model.device_profile import select_profile
from vlray.model.loader import load_model, load_processor, wrap_model
from vlray.model.presets import build_model, load_preset_config
from vlray.testing.sample_images import make_image

CHANNEL = 5


def _push_residual_past_fp16(model) -> None:
    """A 'massive activation' like Qwen's: channel 5 of every embedding at 60000, and layer 0's attention adding
    about 51000 more to it (RMSNorm turns the channel into ~8, v_proj copies it, o_proj scales it up)."""
    text = model.model.language_model
    with torch.no_grad():
        text.embed_tokens.weight[:, CHANNEL] = 60000.0
        attention = text.layers[0].self_attn
        attention.v_proj.weight.zero_()
        attention.v_proj.weight[:, CHANNEL] = 1.0
        attention.o_proj.weight[CHANNEL, :] = 100.0


def test_plain_fp16_overflows_where_the_fp32_residual_does_not(tiny_model_dir):
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float16)
    _push_residual_past_fp16(plain)
    with torch.inference_mode():
        assert not torch.isfinite(plain(**inputs).logits).all()  # the failure the fix exists for

    loaded = load_model(EngineConfig(model=str(tiny_model_dir), device_profile="cpu", dtype="float16"))
    _push_residual_past_fp16(loaded.model)
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


def test_engine_prefill_and_decode_stay_finite_in_fp16(tiny_model_dir):
    config = EngineConfig(model=str(tiny_model_dir), device_profile="cpu", dtype="float16", kv_cache_bytes=8 << 20,
                          default_max_tokens=6)
    loaded = load_model(config)
    _push_residual_past_fp16(loaded.model)
    engine = LLM(config, loaded=loaded)
    prefill_logits, decode_logits = _spy(engine.backend.runner)
    results = engine.generate([{"id": "img", "prompt": "Describe.", "images": [make_image(100, 80, 2)]},
                               {"id": "txt", "prompt": "Hello there"}])
    assert all(r.ok and len(r.token_ids) == 6 for r in results)
    assert prefill_logits and decode_logits
    assert all(torch.isfinite(x).all() for x in prefill_logits + decode_logits)


def _spy(runner):
    prefill_logits, decode_logits = [], []
    run, decode = runner.prefill_runner.run, runner.decode

    def prefill_spy(*args):
        result = run(*args)
        prefill_logits.append(result.logits)
        return result

    def decode_spy(*args, **kwargs):
        logits = decode(*args, **kwargs)
        decode_logits.append(logits)
        return logits

    runner.prefill_runner.run, runner.decode = prefill_spy, decode_spy
    return prefill_logits, decode_logits


@pytest.mark.slow
def test_full_size_2b_config_in_fp16_has_no_inf_or_nan(tiny_model_dir):
    processor = load_processor(tiny_model_dir, max_pixels=256 * 256)
    tokenizer = processor.tokenizer
    hf_config = load_preset_config("qwen3_vl_2b_instruct", **{
        name: tokenizer.convert_tokens_to_ids(token) for name, token in [
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]})
    model = build_model(hf_config, device="cpu", dtype=torch.float16)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    config = EngineConfig(model=str(tiny_model_dir), device_profile="cpu", dtype="float16", max_pixels=256 * 256,
                          kv_cache_bytes=64 << 20, default_max_tokens=3)
    loaded = wrap_model(model, processor, select_profile("cpu", None, dtype="float16"), config)
    engine = LLM(config, loaded=loaded)
    prefill_logits, decode_logits = _spy(engine.backend.runner)
    results = engine.generate([{"id": "img", "prompt": "Describe this.", "images": [make_image(128, 96, 1)]},
                               {"id": "txt", "prompt": "Hello there"}])
    assert all(r.ok and len(r.token_ids) == 3 for r in results)
    assert len(prefill_logits) == 2 and len(decode_logits) == 2
    assert all(torch.isfinite(x).all() for x in prefill_logits + decode_logits)
