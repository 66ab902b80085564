"""The published 2B config as data: built on the meta device it has Qwen3-VL-2B's parameter count."""

from vlray.model.presets import build_model, count_parameters, kv_cache_bytes_per_token, load_preset_config


def test_meta_2b_model_has_2_13_billion_parameters():
    config = load_preset_config("qwen3_vl_2b_instruct")
    model = build_model(config, device="meta")
    total = count_parameters(model)
    assert round(total / 1e9, 2) == 2.13
    assert round(count_parameters(model.model.language_model) / 1e9, 2) == 1.72
    assert round(count_parameters(model.model.visual) / 1e9, 2) == 0.41
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied: counted once
    assert all(p.device.type == "meta" for p in model.parameters())


def test_2b_facts_from_design():
    config = load_preset_config("qwen3_vl_2b_instruct")
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
            text.head_dim, text.vocab_size) == (28, 2048, 16, 8, 128, 151936)
    assert (vision.depth, vision.hidden_size, vision.patch_size, vision.spatial_merge_size) == (24, 1024, 16, 2)
    assert list(vision.deepstack_visual_indexes) == [5, 11, 17]
    assert kv_cache_bytes_per_token(config) == 112 * 1024


def test_token_ids_can_be_overridden():
    config = load_preset_config("qwen3_vl_2b_instruct", image_token_id=12, vocab_size=1000)
    assert config.image_token_id == 12
    assert config.text_config.vocab_size == 1000
