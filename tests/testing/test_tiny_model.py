"""The tiny model folder is a real Hugging Face Qwen3-VL: Auto classes load it offline and it generates."""

import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen3VLForConditionalGeneration

from vlray.testing.tiny_model import SPECIAL_TOKENS


def test_auto_classes_load_it(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    assert type(processor).__name__ == "Qwen3VLProcessor"
    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or token == "<|endoftext|>"
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    # Untied: tied random embeddings make greedy decoding repeat one token.
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    assert model.config.text_config.hidden_size == 64


def test_chat_template_is_qwen3_vl_format(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_tokenizer_round_trips_any_text(tiny_model_dir):
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    text = "Describe the picture: 42 red cats, naïve café, 東京 🚗!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_weights_are_seeded(tiny_model_dir, tmp_path):
    from vlray.testing.tiny_model import build_tiny_model

    again = build_tiny_model(tmp_path / "again")
    first = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    second = AutoModelForImageTextToText.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cli_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "cli-model"
    subprocess.run([sys.executable, "-m", "jobs.make_tiny_model", str(out)], check=True, capture_output=True)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "chat_template.jinja").is_file() and (out / "processor_config.json").is_file()
