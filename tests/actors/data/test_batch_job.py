"""The batch job on Ray Data: every id once, greedy texts equal plain generate, bad rows become error rows,
bad paths fail at once, all three input kinds, and the stats JSON."""

import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors.data.batch_job import main as batch_main
from vlray.testing.reference import reference_generate
from vlray.testing.sample_images import make_image


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return path


def _run(model_dir, input_path, output, *extra):
    stats = output.parent / f"{output.name}-stats.json"
    code = batch_main(["--model", str(model_dir), "--input", str(input_path), "--output", str(output),
                       "--max-tokens", "10", "--window-rows", "8", "--rows-per-shard", "7", "--stats", str(stats),
                       *extra])
    return code, pd.read_parquet(output), json.loads(stats.read_text())


@pytest.fixture(scope="module")
def good_rows(sample_images):
    rows = []
    for i in range(14):
        row = {"id": f"row-{i}", "prompt": "Describe it." + " Please be precise." * (i % 4), "topic": f"t{i % 3}"}
        if i % 3:
            row["images"] = [str(sample_images[i % len(sample_images)])]
        rows.append(row)
    rows.append({"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Name a colour."}], "max_tokens": 6})
    return rows


def test_every_id_once_and_greedy_equal_to_plain_generate(ray_local, tiny_model_dir, tiny_loaded, good_rows,
                                                          tmp_path):
    input_path = _write_jsonl(tmp_path / "in.jsonl", good_rows)
    code, out, stats = _run(tiny_model_dir, input_path, tmp_path / "out")
    assert code == 0
    assert sorted(out["id"]) == sorted(r["id"] for r in good_rows)
    assert (out["finish_reason"] != "error").all()
    by_id = out.set_index("id")
    for row in good_rows:
        expected = reference_generate(tiny_loaded, row, 10)
        assert by_id.loc[row["id"], "text"] == tiny_loaded.tokenizer.decode(expected, skip_special_tokens=True)
        assert by_id.loc[row["id"], "num_generated_tokens"] == len(expected)
    assert by_id.loc["row-4", "topic"] == "t1"  # extra columns carried through
    assert by_id.loc["row-4", "source"] == "in.jsonl:5"
    assert stats["rows_ok"] == len(good_rows) and stats["rows_failed"] == 0
    assert 0 <= stats["padding_fraction"] < 1 and 0 <= stats["generate_wait_fraction"] <= 1
    assert stats["generated_tokens"] == out["num_generated_tokens"].sum()
    assert set(stats["stage_seconds"]) >= {"preprocess", "load", "transfer", "compute", "postprocess", "write"}
    assert stats["output_shards"] == 3  # 15 rows, 7 per shard
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_each_bad_row_becomes_an_error_row(ray_local, tiny_model_dir, sample_images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(sample_images[0].read_bytes()[:200])
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000)).save(huge)
    rows = [
        {"id": "ok-1", "prompt": "Hello"},
        '{"id": "broken", "prompt": ',  # malformed JSON
        {"prompt": "no id here"},
        {"id": "missing-image", "prompt": "x", "images": [str(tmp_path / "nope.png")]},
        {"id": "corrupt-image", "prompt": "x", "images": [str(corrupt)]},
        {"id": "huge-image", "prompt": "x", "images": [str(huge)]},
        {"id": "empty", "prompt": ""},
        {"id": "too-long", "prompt": "word " * 3000},
        {"id": "ok-1", "prompt": "the same id again"},
        {"id": "ok-2", "prompt": "Bye", "images": [str(sample_images[1])]},
    ]
    code, out, stats = _run(tiny_model_dir, _write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out")
    assert code == 0
    assert len(out) == len(rows)
    kinds = dict(zip(out["source"], out["error_kind"]))
    assert kinds["in.jsonl:2"] == "malformed_json"
    assert kinds["in.jsonl:3"] == "missing_id"
    assert kinds["in.jsonl:4"] == "image_not_found"
    assert kinds["in.jsonl:5"] == "corrupt_image"
    assert kinds["in.jsonl:6"] == "image_too_large"
    assert kinds["in.jsonl:7"] == "empty_prompt"
    assert kinds["in.jsonl:8"] == "context_overflow"
    assert kinds["in.jsonl:9"] == "duplicate_id"
    ok = out[out["finish_reason"] != "error"]
    assert sorted(ok["id"]) == ["ok-1", "ok-2"]
    assert ok.set_index("id").loc["ok-1", "source"] == "in.jsonl:1"  # the first of the duplicates runs
    assert stats["rows_failed"] == 8
    assert stats["errors_by_kind"]["duplicate_id"] == 1
    assert all(out.loc[out["finish_reason"] == "error", "error"].str.len() > 10)


def test_parquet_with_image_bytes(ray_local, tiny_model_dir, tmp_path):
    buffer = io.BytesIO()
    make_image(200, 120, 3).save(buffer, format="JPEG")
    table = pa.table({
        "id": ["p0", "p1", "p2"],
        "prompt": ["What is it?", "Caption this.", "Text only."],
        "image": pa.array([buffer.getvalue(), buffer.getvalue(), None], type=pa.binary()),
        "label": [1, 2, 3],
    })
    pq.write_table(table, tmp_path / "in.parquet")
    code, out, _ = _run(tiny_model_dir, tmp_path / "in.parquet", tmp_path / "out")
    assert code == 0
    out = out.set_index("id")
    assert (out["finish_reason"] != "error").all()
    assert out.loc["p0", "num_prompt_tokens"] > out.loc["p2", "num_prompt_tokens"]  # the image became tokens
    assert list(out.loc[["p0", "p1", "p2"], "label"]) == [1, 2, 3]
    assert out.loc["p1", "source"] == "in.parquet:1"


def test_folder_of_images_uses_the_default_prompt(ray_local, tiny_model_dir, sample_images, tmp_path):
    folder = sample_images[0].parent
    code, out, stats = _run(tiny_model_dir, folder, tmp_path / "out", "--prompt", "Caption this image.")
    assert code == 0
    assert sorted(out["id"]) == sorted(p.name for p in sample_images)
    assert (out["finish_reason"] != "error").all() and (out["num_prompt_tokens"] > 64).all()
    assert stats["rows"] == len(sample_images)


def test_bad_paths_fail_at_once(tmp_path, capsys):
    missing_model = str(tmp_path / "no-model")
    assert batch_main(["--model", missing_model, "--input", str(tmp_path / "nope.jsonl"),
                       "--output", str(tmp_path / "out")]) == 2
    assert "input path does not exist" in capsys.readouterr().err
    _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "b"}])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert batch_main(["--model", missing_model, "--input", str(tmp_path / "in.jsonl"),
                       "--output", str(blocker / "out")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    assert batch_main(["--model", missing_model, "--input", str(tmp_path / "in.jsonl"),
                       "--output", str(tmp_path / "out")]) == 2
    assert "was not found" in capsys.readouterr().err


def test_a_second_job_on_the_same_images_encodes_none_of_them(ray_local, tiny_model_dir, sample_images, tmp_path):
    folder = sample_images[0].parent
    code, _, first = _run(tiny_model_dir, folder, tmp_path / "first", "--prompt", "Caption this image.")
    assert code == 0 and first["images"] == len(sample_images)
    code, out, second = _run(tiny_model_dir, folder, tmp_path / "second", "--prompt", "What colours are there?")
    assert code == 0 and (out["finish_reason"] != "error").all()
    assert second["images"] == len(sample_images) and second["images_encoded"] == 0  # all from the cache
    assert sum(second["cache"]["hits"].values()) >= len(sample_images)
    code, _, uncached = _run(tiny_model_dir, folder, tmp_path / "third", "--prompt", "Caption.", "--no-cache")
    assert uncached["images_encoded"] == len(sample_images) and uncached["cache"] is None
