"""The quantisation settings from each way in: EngineConfig, the server's arguments, the batch job's flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from actors.data.batch_job import parse_args
from vlray.config import EngineConfig
from vlray.serving.server_config import ServerConfig


def test_engine_config_takes_and_checks_them() -> None:
    config = EngineConfig(model="m", quantization="int4", vision_quantization="int8")
    assert (config.quantization, config.vision_quantization) == ("int4", "int8")
    assert EngineConfig(model="m").quantization == "none"
    with pytest.raises(ValueError, match="use none, int8 or int4"):
        EngineConfig(model="m", quantization="nf4")
    with pytest.raises(ValueError, match="use none or int8"):
        EngineConfig(model="m", vision_quantization="int4")


def test_server_arguments_reach_the_engine_config() -> None:
    engine = ServerConfig(model="m", quantization="int8", vision_quantization="int8").engine_config()
    assert (engine.quantization, engine.vision_quantization) == ("int8", "int8")
    with pytest.raises(ValidationError):
        ServerConfig(model="m", quantization="int3")


def test_batch_flags_parse() -> None:
    args = parse_args(["--model", "m", "--input", "i", "--output", "o", "--quantization", "int4",
                       "--vision-quantization", "int8"])
    assert (args.quantization, args.vision_quantization) == ("int4", "int8")
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--input", "i", "--output", "o", "--quantization", "fp8"])
