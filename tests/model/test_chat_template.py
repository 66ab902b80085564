"""A model folder whose chat template is only in tokenizer_config.json (older exports and fine-tunes) works as
plain transformers does, through the tokenizer's template; a folder with no template anywhere is refused at
load with a message that names what is missing, not one "internal error" per request."""

import json
import shutil

import pytest

from vlray.inputs.preprocessor import RequestPreprocessor
from vlray.model.loader import ChatTemplateMissingError, load_processor


def _without_processor_template(tiny_model_dir, tmp_path, keep_in_tokenizer: bool):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    for extra in ("chat_template.json",):
        (folder / extra).unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    if keep_in_tokenizer:
        config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    return folder


def test_the_tokenizer_template_is_the_fallback(tiny_model_dir, tmp_path):
    reference = load_processor(tiny_model_dir, 1 << 20)
    processor = load_processor(_without_processor_template(tiny_model_dir, tmp_path, True), 1 << 20)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    assert (processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    prepared = RequestPreprocessor(processor, 2048, 4, 10**7).prepare({"id": "x", "prompt": "Hello there"})
    assert prepared.num_prompt_tokens > 3


def test_no_template_anywhere_is_refused_at_load(tiny_model_dir, tmp_path):
    folder = _without_processor_template(tiny_model_dir, tmp_path, False)
    with pytest.raises(ChatTemplateMissingError, match="chat_template.jinja.*tokenizer_config.json"):
        load_processor(folder, 1 << 20)
