"""The `vlray` command as a user runs it: the installed console script, each subcommand's --help, and
`vlray serve` in the foreground, answering through the openai client and stopping on Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from actors.serve.serve_command import build_parser, config_of
from jobs.cli import COMMANDS

# The script pip installed beside this interpreter (pyproject's [project.scripts]).
VLRAY = shutil.which("vlray", path=str(Path(sys.executable).parent))


def _vlray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    assert VLRAY is not None, "the vlray console script is not installed (pip install -e .)"
    return subprocess.run([VLRAY, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command() -> None:
    out = _vlray("--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert name in out.stdout


def test_an_unknown_command_is_an_error() -> None:
    out = _vlray("sevre")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_its_defaults(command: str) -> None:
    out = _vlray(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: vlray {command}")
    if command in ("serve", "batch", "plan"):
        assert "(default:" in out.stdout


def test_serve_flags_cover_every_server_and_engine_setting(tiny_model_dir: Path) -> None:
    parser = build_parser()
    args = parser.parse_args([str(tiny_model_dir), "--max-batch-size", "3", "--no-enable-prefix-caching",
                              "--served-model-name", "tiny", "--device-profile", "cpu"])
    config = config_of(args)
    assert (config.model, config.max_batch_size, config.enable_prefix_caching) == (str(tiny_model_dir), 3, False)
    assert config.model_name == "tiny"
    flags = {a.dest for a in parser._actions}
    from vlray.serving.server_config import ServerConfig

    assert set(ServerConfig.model_fields) <= flags


def test_serve_refuses_a_bad_setting_before_ray_starts(tiny_model_dir: Path) -> None:
    out = _vlray("serve", str(tiny_model_dir), "--max-batch-size", "0", timeout=60)
    assert out.returncode == 2
    assert "max_batch_size" in out.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_and_stops_on_ctrl_c(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [VLRAY, "serve", str(tiny_model_dir), "--port", str(port), "--ray-address", "local",
         "--served-model-name", "tiny", "--device-profile", "cpu", "--default-max-tokens", "6",
         "--num-cpus-per-replica", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vlray serve did not answer /health within 180 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi there"}],
                                               max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens >= 1

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
