"""The README's Python example runs as written (against the tiny model and the demo's images)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from vlray.testing.sample_images import make_sample_images

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tiny_model_dir, tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "tiny-qwen3-vl").symlink_to(tiny_model_dir)
    make_sample_images(artifacts / "demo-images")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("q1 length 16 None")
    assert lines[1].startswith("q2 ")
    assert lines[2].startswith("q3 error 0 image file not found")
