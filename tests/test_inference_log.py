"""The inference log on the core with a small fitted model: rows written equal rows
answered, with their ids and inputs; files rotate by size and the log keeps under its
byte bound, counting what it removed; a full queue drops rows and counts them, and
every request is answered all the same."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from model_server.monitoring import inference_log
from tests.test_server_core import build, classifiers, predict, sample


def logged_server(directory: Path, **log: object) -> tuple[object, CollectorRegistry]:
    settings = {"enabled": True, "directory": str(directory), **log}
    return build(classifiers(), {"models": {"c": {"variants": [{"tag": "c:v1"}]}}, "inference_log": settings})


def answer(server, rows: list[list[list[float]]], pause: float = 0.0) -> list[str]:  # type: ignore[no-untyped-def]
    async def scenario() -> list[str]:
        ids = []
        for instances in rows:
            ids += (await predict(server, "c", instances)).ids
            await asyncio.sleep(pause)
        return ids

    return asyncio.run(scenario())


def requests(count: int, seed: int = 0) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 3, (int(rng.integers(1, 6)), 2)).round(3).tolist() for _ in range(count)]


def read(directory: Path) -> pd.DataFrame:
    files = sorted(directory.glob("predictions/c/v1/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_rows_written_equal_rows_answered(tmp_path: Path) -> None:
    server, registry = logged_server(tmp_path)
    sent = requests(30)
    ids = answer(server, sent)
    server.close()  # writes what is queued and closes the files
    logged = read(tmp_path)
    assert len(logged) == len(ids) == sum(len(r) for r in sent)
    assert list(logged["id"]) == ids  # one worker, in order
    assert logged[["input.a", "input.b"]].to_numpy().tolist() == [row for r in sent for row in r]
    assert set(logged["tag"]) == {"c:v1"} and set(logged["runtime"]) == {"sklearn"}
    assert logged["output.predict"].isin(["no", "yes"]).all()
    assert np.allclose(logged["output.probability.no"] + logged["output.probability.yes"], 1)
    assert logged["key_fingerprint"].isna().all()
    assert sample(registry, "model_server_inference_log_rows_total", outcome="written") == len(ids)
    assert not list(tmp_path.rglob("*.partial"))


def test_files_rotate_by_size_and_the_log_stays_under_its_byte_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request on its own file: written (and so rotated) at every wake, and a wake between requests.
    monkeypatch.setattr(inference_log, "WRITE_EVERY_S", 0.0)
    monkeypatch.setattr(inference_log, "POLL_S", 0.005)
    server, registry = logged_server(tmp_path / "all", rotate_bytes=1)
    ids = answer(server, requests(12), pause=0.05)
    server.close()
    files = list((tmp_path / "all").rglob("*.parquet"))
    assert len(files) > 1 and len(read(tmp_path / "all")) == len(ids)
    one_file = max(f.stat().st_size for f in files)
    bound = 3 * one_file
    server, registry = logged_server(tmp_path / "bounded", rotate_bytes=1, max_bytes=bound)
    ids = answer(server, requests(12), pause=0.05)
    server.close()
    kept = read(tmp_path / "bounded")
    assert sum(f.stat().st_size for f in (tmp_path / "bounded").rglob("*.parquet")) <= bound
    assert 0 < len(kept) < len(ids)
    assert list(kept["id"]) == ids[-len(kept) :]  # the newest rows are kept
    removed = sample(registry, "model_server_inference_log_rows_total", outcome="removed")
    assert removed == len(ids) - len(kept)


def test_a_full_queue_drops_and_counts_rows_and_every_request_is_answered(tmp_path: Path) -> None:
    server, registry = logged_server(tmp_path, queue_rows=3)
    sent = [[[1.0, 1.0]] * 4] * 5 + [[[2.0, 2.0]]]  # four rows never fit in a queue of three
    ids = answer(server, sent)
    server.close()
    assert len(ids) == 21
    assert sample(registry, "model_server_inference_log_rows_total", outcome="dropped") == 20
    assert len(read(tmp_path)) == 1


def test_feedback_is_logged_beside_the_predictions(tmp_path: Path) -> None:
    server, _ = logged_server(tmp_path)
    ids = answer(server, [[[0.0, 0.0], [3.0, 3.0]]])
    results = server.feedback("c", [{"id": ids[0], "truth": "no"}, {"id": ids[0], "truth": "no"}, {"id": "x"}])
    assert [r.status for r in results] == ["accepted", "duplicate", "invalid_id"]
    server.close()
    [file] = tmp_path.glob("feedback/c/*.parquet")
    fed = pd.read_parquet(file)
    assert list(fed["id"]) == [ids[0], ids[0]] and list(fed["status"]) == ["accepted", "duplicate"]
    assert list(fed["truth"]) == ["no", "no"] and set(fed["tag"]) == {"c:v1"}
