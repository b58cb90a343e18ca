"""The outcome store shared by workers through a directory: an id counts once whichever
store sees it first, every store reads the sum of all, and a new window starts empty."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from model_server.monitoring.outcomes import RECORD, OutcomeStore


def worker(directory: Path, name: str) -> OutcomeStore:
    store = OutcomeStore(directory)
    store._worker = name  # two workers of one server, in one test process
    store.start_window(1, "1-abc")
    return store


def records(count: int, correct: int) -> np.ndarray:
    rows = np.zeros(count, RECORD)
    rows["truth"] = 1
    rows["predicted"][:correct] = 1
    return rows


def test_two_workers_count_an_id_once_and_read_the_same_sum(tmp_path: Path) -> None:
    first, second = worker(tmp_path, "host-1"), worker(tmp_path, "host-2")
    digest, now_ms = bytes(range(16)), int(time.time() * 1000)
    assert first.first_time(digest, now_ms)
    assert not second.first_time(digest, now_ms)
    assert not first.first_time(digest, now_ms)
    # Markers older than the maximum age are removed (their ids are refused as expired).
    old = now_ms - 40 * 86_400_000
    assert first.first_time(digest, old)
    second._pruned = 0.0  # as if a minute had passed
    assert second.first_time(digest, now_ms - 1) is False
    assert not any(p.name == str(old // 3_600_000) for p in (tmp_path / "seen").iterdir())
    first.add("t:v1", records(3, 2))
    second.add("t:v1", records(4, 1))
    for store in (first, second):
        found, workers = store.read("t:v1")
        assert len(found) == 7 and int((found["predicted"] == found["truth"]).sum()) == 3
        assert workers == (4, 3)
    first.start_window(2, "2-def")
    assert len(first.read("t:v1")[0]) == 0
    assert not (tmp_path / "t+v1.r1-abc.host-1.outcomes").exists()  # its own file of the old window is gone
    assert (tmp_path / "t+v1.r1-abc.host-2.outcomes").exists()  # the other worker's is its own to remove


def test_a_partly_written_record_is_left_for_the_next_read(tmp_path: Path) -> None:
    store = worker(tmp_path, "host-1")
    store.add("t:v1", records(2, 2))
    with (tmp_path / "t+v1.r1-abc.host-9.outcomes").open("wb") as out:
        out.write(records(1, 1).tobytes()[:10])
    assert len(store.read("t:v1")[0]) == 2
