"""The sampling defaults of a model folder: what its generation_config.json sets, as vLLM takes them.

A request's unset sampling fields take these (the preprocessor fills them in). Only the fields the file itself
sets count: transformers' GenerationConfig fills every other one with its own defaults (temperature 1.0, top_k
50), which are not the model's advice. `do_sample: false` means greedy whatever temperature the file gives;
`do_sample: true` with no temperature means transformers' own 1.0, what `generate` would sample with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlray.config import SamplingDefaultsName
from vlray.inputs.prepared_request import bounded_value

log = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"
DEFAULTED_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
"""The generation_config.json fields a request inherits (vLLM's list; presence/frequency are not HF fields)."""


def sampling_defaults(model_dir: Path | str | None, mode: SamplingDefaultsName = "model") -> dict[str, Any]:
    """The defaults of a request's unset sampling fields: the folder's (mode "model"), or none at all ("vlray":
    greedy, no filters, no penalties). A file that is missing or unreadable gives none, with a warning."""
    if mode == "vlray" or model_dir is None:
        return {}
    path = Path(model_dir) / GENERATION_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    defaults: dict[str, Any] = {}
    for name in DEFAULTED_FIELDS:
        if raw.get(name) is None:
            continue
        try:
            defaults[name] = bounded_value(name, raw[name])
        except ValueError as exc:  # a value no request could send: the model's advice is unusable, not fatal
            log.warning("ignoring %s from %s: %s", name, path, exc)
    do_sample = raw.get("do_sample")
    if do_sample is False:
        defaults["temperature"] = 0.0
    elif do_sample is True and "temperature" not in defaults:
        defaults["temperature"] = 1.0
    return defaults
