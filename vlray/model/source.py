"""Find a model's folder: a local path, or a hub id resolved through the local Hugging Face cache (never a download)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError


class ModelNotFoundError(FileNotFoundError):
    """The model's weights are not on this machine; the message says where we looked and how to get them."""


def resolve_model_dir(model: str, cache_dir: str | Path | None = None) -> Path:
    """Return the folder holding config.json and *.safetensors for `model` (a path or a cached hub id).

    `cache_dir` overrides the Hugging Face hub cache (HF_HUB_CACHE) to look in.
    """
    path = Path(model).expanduser()
    if path.exists():
        return _checked_model_dir(path)
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            snapshot = snapshot_download(repo_id=model, local_files_only=True, cache_dir=cache_dir)
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
            snapshot = None
        if snapshot is not None:
            return _checked_model_dir(Path(snapshot))
    raise ModelNotFoundError(
        f"model {model!r} was not found. Looked for a local folder at {path.resolve()}"
        + (f" and for the hub id in the Hugging Face cache at {cache_dir or constants.HF_HUB_CACHE}"
           if looks_like_hub_id else "")
        + ". vlray never downloads weights itself: fetch them once with "
        f"`hf download {model if looks_like_hub_id else 'Qwen/Qwen3-VL-2B-Instruct'}` (from huggingface_hub; "
        "HF_HOME or HF_HUB_CACHE choose where they go), or pass --model /path/to/a/folder with config.json and "
        "*.safetensors.")


def _checked_model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is a file; --model wants the folder holding config.json and the weights.")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: it is not a Hugging Face model folder.")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(
            f"{path} has no *.safetensors weights (a partial download?). Fetch the model again with `hf download`.")
    return path


def model_fingerprint(model_dir: Path) -> str:
    """A short hash that changes when the config or any weight file changes (used in cache keys)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(json.loads((model_dir / "config.json").read_text()), sort_keys=True).encode())
    for weights in sorted(model_dir.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]
