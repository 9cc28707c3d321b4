"""Tests for :mod:`airflow_provider_kakaopose.tables.body` and the scanner's end checks: bodies cut short, in
any piece size and in little memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from helpers import random_person as person
from tables_cases import video

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseResponseError,
)
from airflow_provider_kakaopose.tables import (
    keypoints_reader,
    keypoints_table,
    scanner,
)

# ------------------------------------------------------------------------------------------ bodies cut short


def escaped_body(frames: int = 3) -> bytes:
    """A complete raw answer with escapes, quotes, brackets and non-ASCII text in its strings (the nesting
    check must see through them)."""
    r = video([[person(1)], [], [person(2), person(3)]][:frames])
    r["info"] = {"version": '19\\12"27 [{', "note\\": "é ü \\\\", 'k"ey': "}]", "path": "C:\\"}
    return json.dumps(r, ensure_ascii=False).encode()


def test_a_body_cut_at_any_byte_is_reported_as_cut_short():
    body = escaped_body()
    assert keypoints_table(body).num_rows == 3 * 17  # complete, it reads
    for n in range(1, len(body)):
        with pytest.raises(KakaoPoseResponseError) as caught:
            keypoints_table(body[:n])
        message = str(caught.value)
        assert message.startswith("Pose result is not valid JSON: the body is cut short"), (n, message)
        assert f"its {n:,} bytes end inside" in message, (n, message)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_the_cut_short_check_reads_in_pieces_of_any_size(monkeypatch, chunk):
    """The check reads a body in pieces (``CHECK_CHUNK``): an escape, a string or a bracket split between
    two pieces gives the same verdict."""
    body = escaped_body(frames=2)
    cuts = [*range(1, len(body), 61), *(i + 1 for i in range(len(body)) if body[i] == 0x5C)]  # after "\\"
    want = {n: scanner.cut_short_message(body[:n]) for n in cuts}
    assert all(want.values()) and scanner.cut_short_message(body) is None
    monkeypatch.setattr(scanner, "CHECK_CHUNK", chunk)
    assert {n: scanner.cut_short_message(body[:n]) for n in cuts} == want
    assert scanner.cut_short_message(body) is None


def test_a_cut_short_body_says_where_it_ends():
    r = video([[person(1)], [person(2)], [person(3)]])
    body = json.dumps(r).encode()
    in_second = body.index(b'{"frame_num": 1') + 40
    cases = {
        b'{"annotations": [': r"its 17 bytes end inside 'annotations', with 2 brackets left open$",
        body[:in_second]: r"end inside annotations\[1\], after 1 complete element(, inside a string)?, with",
        body[: body.index(b'"video"') + 20]: r"end inside 'video', with 2 brackets left open$",
        body[:-1]: rf"its {len(body) - 1:,} bytes end inside the top-level object, with 1 bracket left open$",
        json.dumps([person(1), person(2)]).encode()[:-30]: r"end inside element \[1\] of the top-level array",
    }
    for cut, pattern in cases.items():
        with pytest.raises(KakaoPoseResponseError, match=pattern):
            keypoints_table(cut)
        with pytest.raises(KakaoPoseResponseError, match=pattern):
            keypoints_reader(io.BytesIO(cut))  # a file: read in pieces, not whole


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"annotations": [], "status": "success"} trailing', r"not valid JSON: Extra data: line 1 column 42"),
        (b'{"annotations": [1, 2}, "status": "success"}', r"not valid JSON: Expecting ',' delimiter: .*\(char 21\)"),
        (b'{"annotations": [1, 2}', r"not valid JSON: Expecting ',' delimiter: .*\(char 21\)"),
        (b'[{"area": 1]', r"not valid JSON: Expecting ',' delimiter: .*\(char 11\)"),
        (b'"cut', r"not valid JSON: Unterminated string"),
    ],
)
def test_malformed_bodies_that_are_not_cut_short_keep_the_json_modules_message(body, error):
    """Mismatched brackets or data after the end are not a cut: the json module's exact message is kept."""
    with pytest.raises(KakaoPoseResponseError, match=error):
        keypoints_table(body)


CUT_BODY_CHILD = r"""
import json, os, sys
import numpy, pyarrow, pyarrow.json  # loaded before the baseline, as in a task
from airflow_provider_kakaopose.exceptions import KakaoPoseError
from airflow_provider_kakaopose.tables import BodySpool, keypoints_reader, keypoints_table

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024

path, how = sys.argv[1], sys.argv[2]
spool = BodySpool()
if how == "spool":  # the operator's path: the download written into a spool, then read
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            spool.write(chunk)
base = rss()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak mark
try:
    if how == "spool":
        keypoints_reader(spool).read_all()
    else:
        with open(path, "rb") as f:
            keypoints_table(f)
    error = None
except KakaoPoseError as e:
    error = str(e)
print(json.dumps([peak() - base, error]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_a_large_body_cut_short_is_reported_in_little_memory(tmp_path):
    """A ~35 MB body cut off mid-array used to be parsed whole by json.loads just to report it (~7x its size in
    working memory); its nesting alone now says it is cut short, in a few MB."""
    from airflow_provider_kakaopose.emulator import synth

    body = synth.video_result_bytes("job-cut", synth.VideoSpec(frames=22_000, persons=3), "cut")
    cut = body[: len(body) * 9 // 10]
    del body
    assert cut.rstrip()[-1:] != b"}"  # (a cut that ends with "}" is tried on the fast path first: bounded too)
    path = tmp_path / "cut.json"
    path.write_bytes(cut)
    for how in ("file", "spool"):
        out = subprocess.run(
            [sys.executable, "-c", CUT_BODY_CHILD, str(path), how], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        working, error = json.loads(out.stdout.strip().splitlines()[-1])
        assert working < len(cut) / 3, f"{how}: {working / 1e6:.0f} MB of working memory for {len(cut) / 1e6:.0f} MB"
        assert error and "not valid JSON: the body is cut short" in error and f"its {len(cut):,} bytes" in error
        assert "inside annotations[" in error, error
