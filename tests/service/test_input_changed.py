"""A restore over an input file that changed since its snapshot is refused, instead of
resuming the rest of another input on state built from the first
(``runtime.input_digest``): a JSONL file must still start with the bytes the run read
(appending to it is fine), a CSV or Parquet table must be the same file.
"""

from __future__ import annotations

import itertools
import random
import zlib

import pytest

from streamweights.runtime import sources
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.input_digest import InputDigest
from streamweights.runtime.sources import JsonlSource
from streamweights.runtime.state_store import LocalStateStore
from tests.service.drifting import outputs, run_cli, write_config, write_drifting_input
from tests.service.test_csv_source import one_line_error, sea_rows, table_config, write_csv


def test_digest_covers_the_lines_read_blank_and_crlf_ones_included(tmp_path):
    """Scenario: a file with CRLF line ends, blank lines and no newline at its end, read
    from the start and resumed past its first lines. We expect: after each record handed
    out, the digest is the CRC-32 of the file's bytes up to that record's end; a file
    changed within them, or cut short, is refused; standard input has no digest."""
    content = b'{"a": 1}\r\n\n{"b": 2}\n   \n{"c": 3}'
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)
    source = JsonlSource(str(path))

    def expected(end: int) -> dict[str, int]:
        return {"bytes": end, "crc32": zlib.crc32(content[:end])}

    records = source.open(0)
    assert next(records) == (0, b'{"a": 1}')
    assert source.input_digest(1) == expected(10)
    assert next(records) == (2, b'{"b": 2}')
    assert source.input_digest(3) == expected(20)
    assert next(records) == (4, b'{"c": 3}')
    assert source.input_digest(5) == expected(len(content))
    assert next(records, None) is None
    resumed = source.open(3)
    assert source.input_digest(3) == expected(0)  # nothing handed out yet
    assert next(resumed) == (4, b'{"c": 3}')
    assert source.input_digest(5) == expected(len(content))

    recorded = InputDigest(20, zlib.crc32(content[:20]))
    source.check_input(recorded, "state")
    path.write_bytes(content + b'\n{"d": 4}\n')  # appended: still the same prefix
    source.check_input(recorded, "state")
    path.write_bytes(content.replace(b'"b"', b'"B"'))
    with pytest.raises(RuntimeSetupError, match="differs within them"):
        source.check_input(recorded, "state")
    path.write_bytes(content[:15])
    with pytest.raises(RuntimeSetupError, match="is now only 15 bytes long"):
        source.check_input(recorded, "state")
    assert JsonlSource("-").input_digest(3) is None


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_block_reads_give_the_lines_and_digests_of_line_reads(tmp_path, monkeypatch, block):
    """Scenario: random files (long and short lines, blank ones, CR before newlines, a
    last line with or without a newline) read in blocks of 1 byte to 1 MiB, from the start
    and resumed. We expect: the records (position, bytes) a plain line-by-line read of
    the file gives, and after each, the CRC-32 of the file up to its line's end."""
    monkeypatch.setattr(sources, "READ_BLOCK_BYTES", block)
    rng = random.Random(block)
    path = tmp_path / "input.jsonl"
    for _ in range(12):
        pieces = [rng.choice([b"", b"  ", b'{"k": %d}' % rng.randrange(10**6),
                              b"x" * rng.randrange(1, 90)]) + rng.choice([b"\n", b"\r\n"])
                  for _ in range(rng.randrange(1, 40))]
        content = b"".join(pieces)
        if rng.random() < 0.5:
            content = content.rstrip(b"\r\n") + b"tail"
        path.write_bytes(content)
        ends = list(itertools.accumulate(len(line) for line in content.splitlines(True)))
        expected = [(number, line.rstrip(b"\r\n"))
                    for number, line in enumerate(content.splitlines(True))
                    if line.strip()]
        source = JsonlSource(str(path))
        for start in (0, 1, len(ends) // 2, len(ends)):
            got = []
            for position, line in source.open(start):
                got.append((position, line))
                assert source.input_digest(position + 1) == {
                    "bytes": ends[position], "crc32": zlib.crc32(content[:ends[position]])}
            assert got == [item for item in expected if item[0] >= start]


def _snapshot_files(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "state").iterdir())
            if path.name != "lock"}


def test_rewritten_or_cut_jsonl_is_refused_and_an_appended_one_resumes(tmp_path):
    """Scenario: a run over the first 1,200 lines of a JSONL file stops there
    (``--max-records``); the file is then rewritten (one record's id changed), then cut
    to 1,000 lines, then put back and the rest of the input appended. We expect: the
    changed and the cut file are refused at start, exit 1 with one line naming the
    state_dir and what to do, nothing in the state folder or the outputs touched; the
    appended file resumes and the outputs equal an uninterrupted run's byte for byte."""
    input_path = tmp_path / "input.jsonl"
    lines = write_drifting_input(input_path)
    reference = tmp_path / "reference"
    write_config(reference, input_path)
    result = run_cli("run", "--config", str(reference / "config.yaml"), "--summary",
                     str(reference / "summary.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = outputs(reference)

    cut = 1200
    assert lines[cut - 1].strip()  # (a record: the bound, not the end, stops the run)
    input_path.write_text("\n".join(lines[:cut]) + "\n")
    folder = tmp_path / "resumed"
    config = write_config(folder, input_path)
    run = ("run", "--config", str(config), "--summary", str(folder / "summary.json"))
    result = run_cli(*run, "--max-records", str(cut))
    assert result.returncode == 0, result.stderr[-2000:]
    state, written = _snapshot_files(folder), outputs(folder)
    snapshot = LocalStateStore(folder / "state").load()
    prefix = "\n".join(lines[:cut]).encode() + b"\n"
    assert snapshot["position"] == cut
    assert snapshot["input"] == {"bytes": len(prefix), "crc32": zlib.crc32(prefix)}
    inspected = run_cli("inspect", str(folder / "state"))
    assert f"still starts with the {len(prefix):,} bytes read" in inspected.stdout

    rewritten = list(lines[:cut])
    rewritten[600] = rewritten[600].replace('"id": "e', '"id": "x', 1)
    assert rewritten[600] != lines[600]
    for changed, reason in ((rewritten, "differs within them"),
                            (lines[:1000], "is now only")):
        input_path.write_text("\n".join(changed) + "\n")
        line = one_line_error(run_cli(*run))
        assert f"state_dir {folder / 'state'}" in line and reason in line, line
        assert "Put the original file back" in line
        assert _snapshot_files(folder) == state and outputs(folder) == written

    input_path.write_text("\n".join(lines) + "\n")
    result = run_cli(*run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert outputs(folder) == expected


def test_changed_table_is_refused(config_factory, tmp_path):
    """Scenario: a run over a CSV stops at input position 1,500; one cell of a row it has
    not reached yet is then changed. We expect: the restore is refused (a table's rows are
    read whole and ordered by time, so any change is a new input), exit 1 with one line;
    with the original put back the run resumes and completes."""
    rows = sea_rows(4000)
    path = write_csv(tmp_path / "mine.csv", rows)
    original = (tmp_path / "mine.csv").read_bytes()
    config = table_config(config_factory, "csv", {"path": path, "timestamp_column": "when"})
    run = ("run", "--config", str(config), "--summary", str(config.parent / "summary.json"))
    result = run_cli(*run, "--max-records", "1500")
    assert result.returncode == 0, result.stderr[-2000:]
    snapshot = LocalStateStore(config.parent / "state").load()
    assert snapshot["input"] == {"bytes": len(original), "crc32": zlib.crc32(original)}

    rows[3500] = {**rows[3500], "f0": rows[3500]["f0"] + 1}
    write_csv(tmp_path / "mine.csv", rows)
    line = one_line_error(run_cli(*run))
    assert "a changed file is a new input" in line and str(path) in line, line

    (tmp_path / "mine.csv").write_bytes(original)
    result = run_cli(*run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"complete": true' in (config.parent / "summary.json").read_text()
