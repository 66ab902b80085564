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


def test_tool_tags_are_added_tokens_that_decoding_keeps(tiny_model_dir):
    from vlray.testing.tiny_model import TOOL_TOKENS

    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    ids = [tokenizer.convert_tokens_to_ids(tag) for tag in TOOL_TOKENS]
    assert len(set(ids)) == 4 and tokenizer.unk_token_id not in ids
    assert not set(TOOL_TOKENS) & set(tokenizer.all_special_tokens)  # as in Qwen's tokenizer: not special
    text = 'Sure.<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    encoded = tokenizer(text)["input_ids"]
    assert ids[0] in encoded and ids[1] in encoded
    assert tokenizer.decode(encoded, skip_special_tokens=True) == text


def test_the_template_renders_tools_calls_and_results_as_qwen3_vl_does(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": {"x": 2}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "one"},
        {"role": "tool", "tool_call_id": "b", "content": "two"},
    ]
    text = processor.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        '<|im_start|>assistant\nCalling.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "f", "arguments": {"x": 2}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n")
    # Without tools, the system turn is as it always was.
    plain = processor.apply_chat_template(messages[:2], tokenize=False)
    assert plain.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
