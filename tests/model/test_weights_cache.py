"""The weights cache: the first load on a profile converts and saves, later loads read the saved copy (same
tensors), a folder already in the profile's dtype is loaded as it is, and a damaged or unwritable cache only
costs a reload."""

import logging

import torch

from vlray.config import EngineConfig
from vlray.model.device_profile import select_profile
from vlray.model.loader import load_model
from vlray.model.weights_cache import MANIFEST, cached_weights_dir, load_pretrained, load_with_weights_cache

BF16_CPU = select_profile("cpu", None, "bfloat16")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_first_load_converts_later_loads_read_the_cache(tiny_model_dir, tmp_path):
    model, how = load_with_weights_cache(tiny_model_dir, BF16_CPU, tmp_path, "fp")
    assert how == "converted" and model.dtype == torch.bfloat16
    folder = cached_weights_dir(tmp_path, "fp", BF16_CPU)
    assert folder.name == "fp-bfloat16" and (folder / MANIFEST).is_file() and any(folder.glob("*.safetensors"))
    cached, how = load_with_weights_cache(tiny_model_dir, BF16_CPU, tmp_path, "fp")
    assert how == "cached"
    assert same_weights(cached, load_pretrained(tiny_model_dir, BF16_CPU))
    assert not list(folder.parent.glob(".tmp-*"))


def test_a_folder_in_the_profiles_dtype_is_loaded_directly(tiny_model_dir, tmp_path):
    _, how = load_with_weights_cache(tiny_model_dir, select_profile("cpu", None, None), tmp_path, "fp")
    assert how == "direct" and not (tmp_path / "weights").exists()  # tiny model is float32 on disk


def test_damaged_cache_is_rebuilt(tiny_model_dir, tmp_path, caplog):
    load_with_weights_cache(tiny_model_dir, BF16_CPU, tmp_path, "fp")
    weights = next(cached_weights_dir(tmp_path, "fp", BF16_CPU).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="vlray.model.weights_cache"):
        model, how = load_with_weights_cache(tiny_model_dir, BF16_CPU, tmp_path, "fp")
    assert how == "converted" and "incomplete" in caplog.text
    assert same_weights(model, load_with_weights_cache(tiny_model_dir, BF16_CPU, tmp_path, "fp")[0])


def test_unwritable_cache_still_loads(tiny_model_dir, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="vlray.model.weights_cache"):
        model, how = load_with_weights_cache(tiny_model_dir, BF16_CPU, blocker, "fp")
    assert how == "converted" and model.dtype == torch.bfloat16 and "could not write" in caplog.text


def test_load_model_uses_the_cache_when_configured(tiny_model_dir, tmp_path):
    config = EngineConfig(model=str(tiny_model_dir), device_profile="cpu", dtype="bfloat16", cache_dir=str(tmp_path))
    first = load_model(config)
    assert len(list((tmp_path / "weights").iterdir())) == 1
    second = load_model(config)
    assert same_weights(first.model, second.model) and second.fingerprint == first.fingerprint
    load_model(config.with_updates(cache_dir=str(tmp_path / "off"), cache=False))
    assert not (tmp_path / "off").exists()
