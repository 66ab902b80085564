"""Weights converted once to a device profile's dtype, kept as safetensors, loaded from there the next time.

The first load of a model on a profile loads the original weights (converting them, bf16 -> fp16 on Pascal or
-> fp32 on CPU, say), then writes the converted model with `save_pretrained` into
`<cache_dir>/weights/<fingerprint>-<dtype>/`: into a temporary folder first, with a manifest of file sizes written
last, then renamed into place, so a crash never leaves a folder that looks whole. Later loads read that folder
with `from_pretrained`, which memory-maps safetensors and has nothing left to convert. A folder whose manifest or
file sizes do not match, or that fails to load, is removed and rebuilt; a cache folder that cannot be written
only costs the saving.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, PreTrainedModel

from vlray.model.device_profile import DeviceProfile

log = logging.getLogger(__name__)

MANIFEST = "vlray-weights.json"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def cached_weights_dir(cache_root: Path, fingerprint: str, profile: DeviceProfile) -> Path:
    """Where the weights of this model (fingerprint) in this profile's dtype are kept."""
    return cache_root / "weights" / f"{fingerprint}-{profile.dtype_name}"


def load_pretrained(model_dir: Path, profile: DeviceProfile) -> PreTrainedModel:
    """transformers' from_pretrained in the profile's dtype, onto its device, SDPA attention."""
    return AutoModelForImageTextToText.from_pretrained(
        str(model_dir), dtype=profile.dtype, attn_implementation="sdpa", device_map=profile.device)


def is_complete(folder: Path) -> bool:
    """The manifest is there and every file it lists has the size it records."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def stored_dtypes(model_dir: Path) -> set[str]:
    """safetensors dtype names (F32, F16, BF16, ...) of the floating-point tensors in a model folder."""
    found = set()
    for path in model_dir.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            found.update(handle.get_slice(name).get_dtype() for name in handle.keys())
    return {d for d in found if d.startswith(("F", "BF"))}


def load_with_weights_cache(model_dir: Path, profile: DeviceProfile, cache_root: Path,
                            fingerprint: str) -> tuple[PreTrainedModel, str]:
    """(model, how): `direct` when the folder is in the profile's dtype already (nothing to convert, nothing
    cached), `cached` when read from the cache, `converted` when loaded from model_dir and then cached."""
    if stored_dtypes(model_dir) == {_SAFETENSORS_DTYPES[profile.dtype]}:
        return load_pretrained(model_dir, profile), "direct"
    folder = cached_weights_dir(cache_root, fingerprint, profile)
    if is_complete(folder):
        try:
            return load_pretrained(folder, profile), "cached"
        except Exception as exc:  # a damaged cache must cost a reload, never the worker
            log.warning("cached weights in %s failed to load (%s); loading %s and caching again", folder, exc,
                        model_dir)
    elif folder.exists():
        log.warning("cached weights in %s are incomplete; loading %s and caching again", folder, model_dir)
    model = load_pretrained(model_dir, profile)
    save_converted(model, folder, fingerprint)
    return model, "converted"


def save_converted(model: PreTrainedModel, folder: Path, fingerprint: str) -> bool:
    """Write the model's weights (in its current dtype) to `folder` atomically; False, with a warning, on failure."""
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
        model.save_pretrained(tmp, safe_serialization=True)
        files = {p.name: p.stat().st_size for p in tmp.iterdir()}
        dtype = str(model.dtype).removeprefix("torch.")
        (tmp / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "dtype": dtype, "files": files}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except OSError as exc:
        log.warning("could not write converted weights to %s (%s); later loads will convert again", folder, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return False
    log.info("converted weights cached in %s", folder)
    return True
