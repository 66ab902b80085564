"""`jobs.bench quant` still runs end to end on the tiny model (a benchmark is not a timed test, but one that no
longer starts is a defect: the engine's constructor once changed under it)."""

import argparse

from jobs.bench import quant_bench


def test_quant_bench_runs_and_reports_ratios_against_fp32(tmp_path):
    parser = argparse.ArgumentParser()
    quant_bench.add_arguments(parser)
    args = parser.parse_args(["--size", "tiny", "--variants", "fp32,int8", "--prompt-tokens", "16",
                              "--decode-steps", "2", "--json", str(tmp_path / "quant.json")])
    figures = quant_bench.run(args)
    assert set(figures["variants"]) == {"fp32", "int8"}
    for variant in figures["variants"].values():
        assert variant["decode_b1_tokens_per_s"] > 0 and variant["decode_b8_tokens_per_s"] > 0
        assert variant["prompt_tokens_per_s"] > 0 and variant["peak_rss_gib"] > 0
    assert "int8" in figures["variants"]["int8"]["quantized"]
    assert (tmp_path / "quant.json").is_file()
