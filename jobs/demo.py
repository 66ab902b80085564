"""python -m jobs.demo: a few image and text requests through a ModelWorker on Ray, results printed.

With no --model it builds the tiny random Qwen3-VL (its answers are gibberish by design: random weights) so
the whole path runs on any machine in seconds; pass --model Qwen/Qwen3-VL-2B-Instruct (or a folder) for real
answers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import ray  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from actors.inference_pipeline import InferencePipeline  # noqa: E402
from vlray.config import EngineConfig  # noqa: E402
from vlray.config_fields import HelpFormatter  # noqa: E402
from vlray.testing.sample_images import make_sample_images  # noqa: E402
from vlray.testing.tiny_model import build_tiny_model  # noqa: E402

ARTIFACTS = Path("artifacts")


def demo_requests(images: list[Path]) -> list[dict]:
    """Captioning, visual QA, a two-image comparison, a chat, a text-only prompt and one bad request."""
    return [
        {"id": "caption", "prompt": "Describe this image in one sentence.", "images": [str(images[1])]},
        {"id": "vqa", "prompt": "How many shapes are there?", "images": [str(images[3])]},
        {"id": "compare", "prompt": "What differs between these two images?", "images": [str(images[0]), str(images[2])]},
        {"id": "chat", "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{images[4].resolve()}"}},
                                         {"type": "text", "text": "What colours dominate?"}]}]},
        {"id": "text-only", "prompt": "Name three uses of a camera."},
        {"id": "broken", "prompt": "What is this?", "images": [str(ARTIFACTS / "no-such-image.png")]},
    ]


def main(argv: list[str] | None = None, prog: str = "python -m jobs.demo") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or cached hub id (default: the tiny model)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--device-profile", default="auto", choices=["auto", "cpu", "sm61", "modern"])
    args = parser.parse_args(argv)

    console = Console()
    model = args.model
    if model is None:
        model = str(ARTIFACTS / "tiny-qwen3-vl")
        if not (Path(model) / "config.json").is_file():
            console.print(f"building the tiny random Qwen3-VL in {model} ...")
            build_tiny_model(model)
    images = make_sample_images(ARTIFACTS / "demo-images")

    ray.init(log_to_driver=False)
    config = EngineConfig(model=model, device_profile=args.device_profile, default_max_tokens=args.max_tokens)
    with InferencePipeline(config) as pipeline:
        info = pipeline.worker_info()[0]
        console.print(f"ModelWorker ready: {info['profile']} on {info['device']} ({info['dtype']}), "
                      f"model {info['model_dir']}")
        results = pipeline.run(demo_requests(images))
        stats = pipeline.stats()

    table = Table(title="vlray demo results", show_lines=True)
    for column in ("id", "finish", "prompt tok", "new tok", "text / error"):
        table.add_column(column)
    for r in results:
        shown = r.text if r.ok else f"[red]{r.error}[/red]"
        table.add_row(r.id, r.finish_reason, str(r.num_prompt_tokens), str(r.num_generated_tokens), shown)
    console.print(table)
    console.print(f"{stats['num_ok']} ok, {stats['num_failed']} failed; {stats['num_generated_tokens']} tokens in "
                  f"{stats['wall_seconds']:.2f} s ({stats['generated_tokens_per_second']:.1f} tokens/s); "
                  f"padding fraction {stats['padding_fraction']:.2f}; seconds per stage {stats['stage_seconds']}")
    ray.shutdown()


if __name__ == "__main__":
    main()
