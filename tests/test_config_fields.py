"""One config surface: every EngineConfig field can be set from the server's arguments and from the batch job's
flags, with the same default everywhere, and its docstring is the help of both."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from actors.cache_actor import CacheActorConfig
from actors.data.batch_job import CACHE_ACTOR_PREFIX, ENGINE_FLAG_ALIASES, configs_of, parse_args
from vlray.config import EngineConfig
from vlray.config_fields import ConfigField, add_config_arguments, config_fields, config_from_namespace, flag_of
from vlray.serving.server_config import ServerConfig

JOB = ["--model", "m", "--input", "in.jsonl", "--output", "out"]
ENGINE_FIELDS = config_fields(EngineConfig)


def other_value(f: ConfigField) -> Any:
    """A valid value of the field that is not its default, made from its type alone (so fields added later are
    covered without touching this test)."""
    if f.choices is not None:
        return next(c for c in f.choices if c != f.default)
    base = f.base_type
    if base is bool:
        return not f.default
    if base is int:
        return 2 if f.default in (None, 0, 1) else f.default * 2
    if base is float:
        return 0.5 if f.default in (None, 0.0) else f.default / 2
    if base is str:
        return "/tmp/other" if f.name != "model" else "other-model"
    raise AssertionError(f"EngineConfig.{f.name}: no value for type {f.annotation!r}")


def as_flags(f: ConfigField, value: Any) -> list[str]:
    if f.base_type is bool:
        return [flag_of(f.name) if value else "--no-" + f.name.replace("_", "-")]
    return [flag_of(f.name), str(value)]


def test_every_field_has_a_docstring():
    assert [f.name for f in ENGINE_FIELDS if not f.help] == []
    assert [f.name for f in config_fields(CacheActorConfig) if not f.help] == []


@pytest.mark.parametrize("f", ENGINE_FIELDS, ids=[f.name for f in ENGINE_FIELDS])
def test_every_engine_field_is_reachable_from_the_server_and_the_batch_cli(f: ConfigField):
    value = other_value(f)
    assert value != f.default
    # The server: `serve run jobs.serve:app key=value` hands the builder strings.
    server = ServerConfig.model_validate({"model": "m", f.name: str(value)}).engine_config()
    assert getattr(server, f.name) == value
    job = JOB if f.name != "model" else JOB[2:] + ["--model", str(value)]
    engine, _ = configs_of(parse_args(job + ([] if f.name == "model" else as_flags(f, value))))
    assert getattr(engine, f.name) == value
    # Python: the dataclass itself, with the same value.
    assert getattr(EngineConfig(**{"model": "m", f.name: value}), f.name) == value


def test_defaults_agree_everywhere():
    python = EngineConfig(model="m")
    server = ServerConfig(model="m").engine_config()
    cli, cache_actor = configs_of(parse_args(JOB))
    assert python == server == cli
    assert cache_actor == CacheActorConfig()
    assert python.max_batch_size == 32


def test_old_flag_spellings_still_work_and_cache_actor_flags_exist():
    args = JOB + ["--max-tokens", "9", "--batch-tokens", "999", "--no-cache", "--cache-actor-name", "c1",
                  "--cache-actor-detached", "--cache-actor-retry-s", "2.5"]
    engine, cache_actor = configs_of(parse_args(args))
    assert (engine.default_max_tokens, engine.max_batch_tokens, engine.cache) == (9, 999, False)
    assert cache_actor == CacheActorConfig(name="c1", detached=True, retry_s=2.5)
    assert set(ENGINE_FLAG_ALIASES) <= {f.name for f in ENGINE_FIELDS}
    assert CACHE_ACTOR_PREFIX == "cache_actor_"


def test_help_shows_each_flag_with_its_docstring_and_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-batch-size MAX_BATCH_SIZE Rows: of one static batch (hf)" in text
    assert "(default: 32)" in text and "--enable-prefix-caching, --no-enable-prefix-caching" in text
    assert "--kv-cache-memory-fraction" in text and "(default: 0.8)" in text


@pytest.mark.parametrize("args, fragment", [
    ({"model": "m", "block_sise": 8}, "block_sise"),
    ({"model": "m", "block_size": "eight"}, "block_size"),
    ({"model": "m", "kv_cache_memory_fraction": 1.5}, "kv_cache_memory_fraction"),
    ({"model": "m", "dtype": "float8"}, "dtype"),
])
def test_the_server_refuses_typos_and_bad_values_naming_the_field(args, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ServerConfig.model_validate(args)


def test_the_cli_refuses_bad_values(capsys):
    with pytest.raises(SystemExit):
        parse_args(JOB + ["--dtype", "float8"])
    assert "--dtype" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kv_cache_memory_fraction"):
        configs_of(parse_args(JOB + ["--kv-cache-memory-fraction", "1.5"]))


def test_a_field_added_later_shows_up_on_every_surface():
    """The derivation reads whatever fields a config has: a new one, with its docstring, needs no hand copy."""

    @dataclass(frozen=True)
    class Later:
        quantization: Literal["none", "int8"] | None = None
        """How the weights are stored."""
        top_k: int = 0
        """Sampling default."""

    fields = {f.name: f for f in config_fields(Later)}
    assert fields["quantization"].choices == ("none", "int8") and fields["quantization"].is_optional
    assert fields["top_k"].help == "Sampling default."
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Later)
    assert config_from_namespace(Later, parser.parse_args([])) == Later()
    given = parser.parse_args(["--quantization", "int8", "--top-k", "5"])
    assert config_from_namespace(Later, given) == Later("int8", 5)
    assert "How the weights are stored." in parser.format_help()
