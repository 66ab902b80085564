"""The batch job tried as a hostile input file would, on the session's one local Ray.

One folder holds every class of bad row beside good ones, in a UTF-8 file with a BOM, a UTF-16 file, a Parquet
file, a Parquet file with a corrupt row group (found mid-stream), and files that are not rows (a README, an
image). The first run hits a full disk after its first shard and must stop cleanly; the resume must finish.
Then: every input row is in the output exactly once (rows lost 0), each bad row has its error kind, every good
row its exact greedy text. A corrupt Parquet footer is an exit 2 before any model loads."""

import errno
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.data.batch_job import main as batch_main
from vlray.batch import shard_writer
from vlray.testing.reference import reference_generate
from vlray.testing.sample_images import make_image

MAX_TOKENS = 6


def _good(i):
    return {"id": f"good-{i}", "prompt": f"Tell me about thing {i}."}


def _bad_rows(folder):
    """(raw JSONL line, expected error kind or None for a row that must succeed greedily) per row."""
    image = folder / "pics" / "cat.png"
    (folder / "loop1").symlink_to(folder / "loop2")
    (folder / "loop2").symlink_to(folder / "loop1")
    line = json.dumps
    return [
        ("{not json", "malformed_json"),
        ("[1, 2, 3]", "malformed_json"),
        (line({"prompt": "no id"}), "missing_id"),
        (line({"id": "t-tiny", "prompt": "edge", "temperature": 1e-300}), None),
        (line({"id": "p-tiny", "prompt": "edge", "temperature": 1.0, "top_p": 1e-300}), "sampled"),
        (line({"id": "s-huge", "prompt": "edge", "temperature": 1.0, "seed": 2**70}), "sampled"),
        (line({"id": "s-neg", "prompt": "edge", "temperature": 0.8, "seed": -2**70}), "sampled"),
        # A NaN cell is a missing value in a table (Parquet writes them so): the row's default applies.
        ('{"id": "t-nan", "prompt": "edge", "temperature": NaN}', "sampled"),
        ('{"id": "p-inf", "prompt": "edge", "top_p": Infinity}', "invalid_request"),
        (line({"id": "t-neg", "prompt": "edge", "temperature": -1}), "invalid_request"),
        (line({"id": "mt-0", "prompt": "edge", "max_tokens": 0}), "invalid_request"),
        (line({"id": "stop-empty", "prompt": "edge", "stop": [""]}), "invalid_request"),
        (line({"id": "empty", "prompt": "   "}), "empty_prompt"),
        (line({"id": "missing-image", "prompt": "?", "images": [str(folder / "none.png")]}), "image_not_found"),
        (line({"id": "nul-path", "prompt": "?", "images": ["pics/a\u0000.png"]}), "image_not_found"),
        (line({"id": "loop-path", "prompt": "?", "images": [str(folder / "loop1")]}), "image_not_found"),
        (line({"id": "long-name", "prompt": "?", "images": [str(folder / ("n" * 300))]}), "image_not_found"),
        (line({"id": "corrupt-b64", "prompt": "?", "images": ["data:image/png;base64,@@"]}), "corrupt_image"),
        (line({"id": "many-images", "prompt": "?", "images": [str(image)] * 17}), "too_many_images"),
        (line({"id": "huge-text", "prompt": "z" * 1_000_001}), "request_too_large"),
        (line({"id": "over-context", "prompt": "word " * 40_000}), "context_overflow"),
        (line({"id": "good-0", "prompt": "a repeated id"}), "duplicate_id"),
        (line({"id": "with-image", "prompt": "What is it?", "images": [str(image)]}), None),
    ]


@pytest.fixture(scope="module")
def job_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-batch")
    (folder / "pics").mkdir()
    make_image(64, 48, 2).save(folder / "pics" / "cat.png")
    cases = _bad_rows(folder)
    lines = [json.dumps(_good(i)) for i in range(4)] + [raw for raw, _ in cases]
    (folder / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    (folder / "wide.jsonl").write_bytes(("\r\n".join(json.dumps(_good(i)) for i in (4, 5)) + "\r\n").encode("utf-16"))
    pq.write_table(pa.table({"id": ["pq-0", "pq-1", "pq-bad"], "prompt": ["Hello?", "Why?", "Bad"],
                             "temperature": [0.0, 0.0, 5.0]}), folder / "table.parquet")
    corrupt = folder / "broken.parquet"
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(6)], "prompt": ["hello there " * 20] * 6}), corrupt,
                   row_group_size=3, compression="snappy")
    data = bytearray(corrupt.read_bytes())
    offset = pq.ParquetFile(corrupt).metadata.row_group(0).column(1).data_page_offset + 20
    data[offset:offset + 30] = b"\xff" * 30  # the first row group's pages; the footer stays whole
    corrupt.write_bytes(bytes(data))
    (folder / "README.md").write_text("not rows\n" * 50)
    expected = {f"rows.jsonl:{5 + i}": kind for i, (_, kind) in enumerate(cases)}
    expected.update({f"rows.jsonl:{1 + i}": None for i in range(4)})
    expected.update({"wide.jsonl:1": None, "wide.jsonl:2": None, "table.parquet:0": None, "table.parquet:1": None,
                     "table.parquet:2": "invalid_request"})
    expected.update({f"broken.parquet:{i}": "unreadable_input" for i in range(3)})
    expected.update({f"broken.parquet:{i}": None for i in range(3, 6)})
    return folder, expected


def _run(model_dir, input_path, output):
    return batch_main(["--model", str(model_dir), "--input", str(input_path), "--output", str(output),
                       "--max-tokens", str(MAX_TOKENS), "--window-rows", "8", "--rows-per-shard", "6"])


def test_every_row_once_with_its_outcome_through_a_full_disk_and_a_resume(
        ray_local, tiny_model_dir, tiny_loaded, job_input, tmp_path, monkeypatch, capsys, fuzz_tally):
    folder, expected = job_input
    output = tmp_path / "out"
    real, calls = shard_writer._write_synced, []

    def disk_fills(path, table):
        calls.append(path)
        real(path, table)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_writer, "_write_synced", disk_fills)
    assert _run(tiny_model_dir, folder, output) == 1
    message = capsys.readouterr().err
    assert "the output disk is full" in message and "run the same command again to resume" in message
    assert "Traceback" not in message and not list(output.glob(".*"))
    assert len(list(output.glob("part-*.parquet"))) == 1
    monkeypatch.setattr(shard_writer, "_write_synced", real)

    assert _run(tiny_model_dir, folder, output) == 0
    out = pd.read_parquet(output)
    fuzz_tally["batch rows"] += len(expected)
    fuzz_tally["batch rows lost"] += len(set(expected) - set(out["source"]))
    assert sorted(out["source"]) == sorted(expected), "every input row once, nothing else"
    by_source = out.set_index("source")
    for source, kind in expected.items():
        row = by_source.loc[source]
        if kind in (None, "sampled"):
            assert row["finish_reason"] in ("stop", "length"), (source, row["error"])
            fuzz_tally["batch good rows"] += 1
        else:
            assert row["error_kind"] == kind, (source, row["error"])
            fuzz_tally["batch error rows as expected"] += 1
    assert "broken.parquet" in by_source.loc["broken.parquet:0", "error"]
    disturbed = 0
    for source, kind in expected.items():
        row = by_source.loc[source]
        if kind is None and isinstance(row["id"], str):
            prompt = {"pq-0": "Hello?", "pq-1": "Why?"}.get(row["id"])
            request = ({"id": row["id"], "prompt": prompt} if prompt else
                       _good(int(row["id"].split("-")[1])) if row["id"].startswith("good-") else None)
            if request is None:
                continue
            tokens = reference_generate(tiny_loaded, request, MAX_TOKENS)
            disturbed += row["text"] != tiny_loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    fuzz_tally["batch good rows disturbed"] += disturbed
    assert disturbed == 0


def test_a_corrupt_parquet_footer_is_exit_2_before_any_model_loads(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "prompt": ["x"]}), folder / "fine.parquet")
    (folder / "torn.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    (folder / "rows.jsonl").write_text(json.dumps({"id": "j", "prompt": "x"}) + "\n")
    code = batch_main(["--model", "/nonexistent-model-folder", "--input", str(folder), "--output",
                       str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "torn.parquet" in err and "Traceback" not in err
