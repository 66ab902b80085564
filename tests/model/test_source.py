"""Model folders: local paths, hub ids through the local Hugging Face cache, and clear errors otherwise."""

import shutil
from pathlib import Path

import pytest

from vlray.model.source import ModelNotFoundError, model_fingerprint, resolve_model_dir


def _fake_hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay out a model the way huggingface_hub caches it: models--org--name/{refs/main, snapshots/<rev>/}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_local_folder_resolves(tiny_model_dir):
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


def test_hub_id_resolves_through_the_local_cache(tiny_model_dir, tmp_path):
    snapshot = _fake_hub_cache(tmp_path, "Qwen/Qwen3-VL-2B-Instruct", tiny_model_dir)
    assert resolve_model_dir("Qwen/Qwen3-VL-2B-Instruct", cache_dir=tmp_path) == snapshot


def test_missing_hub_id_says_where_it_looked_and_how_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_dir("Qwen/Qwen3-VL-2B-Instruct", cache_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "hf download Qwen/Qwen3-VL-2B-Instruct" in message


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="local folder"):
        resolve_model_dir(str(tmp_path / "nope" / "deeper" / "model"))


def test_folder_without_weights_or_config(tmp_path, tiny_model_dir):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_dir(str(tmp_path))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no \\*.safetensors"):
        resolve_model_dir(str(partial))


def test_fingerprint_changes_with_the_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = model_fingerprint(copy)
    assert before == model_fingerprint(copy)
    with open(copy / "model.safetensors", "ab") as f:
        f.write(b"\0")
    assert model_fingerprint(copy) != before
