"""python -m jobs.make_tiny_model DIR: write the tiny random Qwen3-VL used by tests and the demo."""

from __future__ import annotations

import argparse

from vlray.config_fields import HelpFormatter
from vlray.testing.tiny_model import build_tiny_model


def main(argv: list[str] | None = None, prog: str = "python -m jobs.make_tiny_model") -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tokenizer corpus and the weights")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out_dir, seed=args.seed)
    print(f"tiny Qwen3-VL written to {path}")


if __name__ == "__main__":
    main()
