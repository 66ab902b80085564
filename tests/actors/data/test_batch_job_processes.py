"""The batch job as users run it, in its own processes: killed and resumed, and through `ray job submit`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).parent / "ray")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_args(model_dir, input_path, output) -> list[str]:
    return ["--model", str(model_dir), "--input", str(input_path), "--output", str(output),
            "--max-tokens", "24", "--window-rows", "8", "--rows-per-shard", "8"]


def test_killed_job_resumes_with_every_id_once(tiny_model_dir, tmp_path):
    ids = [f"r{i}" for i in range(120)]
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, row_id in enumerate(ids):
            f.write(json.dumps({"id": row_id, "prompt": f"Count the objects, number {i}."}) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.batch", *_job_args(tiny_model_dir, tmp_path / "in.jsonl", out)]
    job = subprocess.Popen(command, cwd=ROOT, env=_env(), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("part-*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the whole job, Ray's processes included, mid-run
        job.wait()
    first = pd.read_parquet(out)
    assert 0 < len(first) < len(ids), "the job should have been killed part way through"
    assert first["id"].is_unique

    done = subprocess.run([*command, "--stats", str(tmp_path / "stats.json")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = pd.read_parquet(out)
    assert sorted(final["id"]) == sorted(ids)
    assert final["id"].is_unique
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["rows_skipped_already_done"] == len(first)
    assert stats["rows"] == len(ids) - len(first)


def test_ray_job_submit_against_a_local_head(tiny_model_dir, tmp_path):
    rows = [{"id": f"s{i}", "prompt": f"Say {i}."} for i in range(6)]
    with open(tmp_path / "in.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    dashboard = _free_port()
    # Its own temp dir, so the head does not become the machine's "current cluster" for other tests.
    ray_tmp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")
    env = _env(RAY_TMPDIR=ray_tmp)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats",
         # Fixed by default (52365): taken by any other Ray on the machine, the session's own included.
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "the Ray head did not come up"
                time.sleep(0.5)
        out = tmp_path / "out"
        command = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                   "python", "-m", "jobs.batch", *_job_args(tiny_model_dir, tmp_path / "in.jsonl", out)]
        for _ in range(20):  # the dashboard answers before the node's job agent is up
            submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent" not in submit.stderr:
                break
            time.sleep(2)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
        assert "succeeded" in submit.stdout
        result = pd.read_parquet(out)
        assert sorted(result["id"]) == sorted(r["id"] for r in rows)
        assert (result["finish_reason"] != "error").all()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
