"""`python -m scoring` with the local engine: a generated table of 200,000 passengers scored
as the running server answers the same rows (labels, probabilities, explanations, and the
error of each invalid row), and the exit codes of a job that cannot run, which write nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.batch_tables import ID, passengers
from model_server.local_server import RunningServer
from scoring.cli import main
from scoring.job import DRIFT_SUFFIX, METADATA_KEY

ROOT = Path(__file__).resolve().parent.parent
ROWS = 200_000
FEATURES = ["pclass", "sex", "age", "sibsp", "parch"]
NUMERIC = {"age", "sibsp", "parch"}
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
# The real command on a trained store and a table of 200,000 rows: not a fast unit test.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 titanic-like passengers as CSV, with gaps, unseen categories, out-of-range
    and wrong-type values."""
    path = tmp_path_factory.mktemp("table") / "passengers.csv"
    passengers(ROWS, seed=7).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def scored(table: Path, trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("scored") / "scored.parquet"
    code = main(
        ["--model", "titanic", "--input", str(table), "--output", str(output), "--keep", ID, "--max-invalid", "0.05"]
    )
    assert code == 0
    return output


def cells(table: Path, rows: list[int]) -> list[dict[str, str | None]]:
    """The CSV's cells of `rows` (by row id), as text, None for an empty cell."""
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    picked = frame.set_index(ID).loc[[str(r) for r in rows]]
    return [{f: (value or None) for f, value in zip(FEATURES, row, strict=True)} for row in picked[FEATURES].values]


def as_record(row: dict[str, str | None]) -> dict[str, Any]:
    """The JSON a person would send for a CSV row: numbers where the text is one."""
    return {f: float(v) if f in NUMERIC and v is not None and NUMBER.match(v) else v for f, v in row.items()}


def test_output_holds_every_row_with_the_summary_and_drift_beside(table: Path, scored: Path) -> None:
    output = pq.read_table(scored)
    summary = json.loads(pq.ParquetFile(scored).metadata.metadata[METADATA_KEY.encode()])
    errors = output.column("error").to_pylist()
    assert output.num_rows == ROWS and output.column(ID).to_pylist()[:3] == ["0", "1", "2"]
    assert output.column_names == [ID, "prediction", "probability_died", "probability_survived", "tag", "error"]
    invalid = sum(e is not None for e in errors)
    assert summary["tag"] == "titanic:v1" and summary["runtime"] == "onnx" and summary["engine"] == "local"
    assert (summary["rows"], summary["invalid_rows"], summary["valid_rows"]) == (ROWS, invalid, ROWS - invalid)
    assert 0.005 * ROWS < invalid < 0.03 * ROWS
    kinds = {p["type"] for e in errors if e for p in e}
    assert kinds == {"type", "range", "category"}
    drift = json.loads(Path(str(scored) + DRIFT_SUFFIX).read_text())
    assert drift["scored_rows"] == ROWS - invalid and set(drift["psi"]["features"]) == set(FEATURES)
    counts = [sum(b["count"] for b in f["bins"]) for f in drift["features"]]
    assert counts == [ROWS - invalid] * len(FEATURES)


def test_a_sample_equals_the_running_servers_answers(server: RunningServer, table: Path, scored: Path) -> None:
    output = pq.read_table(scored).to_pandas()
    rng = np.random.default_rng(1)
    invalid = output.index[output["error"].notna()]
    valid = output.index[output["error"].isna()]
    sample_valid = sorted(rng.choice(valid, 800, replace=False).tolist())
    sample_invalid = sorted(rng.choice(invalid, 200, replace=False).tolist())
    url = f"{server.url}/v1/models/titanic/versions/v1/predict"
    with httpx.Client(timeout=30) as client:
        records = [as_record(c) for c in cells(table, sample_valid)]
        for start in range(0, len(records), 400):
            answer = client.post(url, json={"instances": records[start : start + 400]}).json()
            rows = output.loc[sample_valid[start : start + 400]]
            assert answer["tag"] == "titanic:v1"
            assert answer["predictions"] == rows["prediction"].tolist()
            got = rows[["probability_died", "probability_survived"]].to_numpy()
            assert np.abs(np.asarray(answer["probabilities"]) - got).max() <= 1e-5  # ONNX
        for row, record in zip(sample_invalid, (as_record(c) for c in cells(table, sample_invalid)), strict=True):
            answer = client.post(url, json={"instances": [record]})
            assert answer.status_code == 400
            want = [{"loc": p["loc"][2:], "msg": p["msg"], "type": p["type"]} for p in answer.json()["detail"]]
            assert [dict(p) for p in output.at[row, "error"]] == [{**p, "loc": list(p["loc"])} for p in want]
            assert all(p["loc"][:2] == ["instances", 0] for p in answer.json()["detail"])


def test_explanations_and_the_pipeline_runtime_equal_the_servers(
    server: RunningServer, table: Path, scored: Path, tmp_path: Path
) -> None:
    """With explanations the server answers from the pipeline: the sklearn runtime, exact."""
    output = pq.read_table(scored).to_pandas()
    rows = output.index[output["error"].isna()][:100].tolist()
    sample = pd.read_csv(table, dtype=str, keep_default_na=False).iloc[rows]
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "explained.parquet"
    args = ["--model", "titanic:v1", "--runtime", "sklearn", "--explain", "--keep", ID]
    assert main([*args, "--input", str(tmp_path / "sample.csv"), "--output", str(out)]) == 0
    explained = pq.read_table(out).to_pandas()
    records = [as_record(c) for c in cells(table, rows)]
    answer = httpx.post(
        f"{server.url}/v1/models/titanic/versions/v1/predict", json={"instances": records, "explain": True}, timeout=60
    ).json()
    assert answer["predictions"] == explained["prediction"].tolist()
    assert answer["probabilities"] == explained[["probability_died", "probability_survived"]].to_numpy().tolist()
    contributions = explained[[f"contribution_{f}" for f in FEATURES]].to_numpy()
    want = np.asarray([[row[f] for f in FEATURES] for row in answer["explanation"]["contributions"]])
    assert np.abs(contributions - want).max() <= 1e-9
    summary = json.loads(pq.ParquetFile(out).metadata.metadata[METADATA_KEY.encode()])
    assert summary["runtime"] == "sklearn"
    assert summary["explanation"]["base_value"] == [pytest.approx(answer["explanation"]["base_value"], abs=1e-12)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def run(*args: str) -> int:
    return main(list(args))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_jobs_exit_2_with_one_error_line_and_write_nothing(
    trained_default_models: list[str], table: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "garbage.parquet").write_bytes(b"not a parquet file at all" * 10)
    passengers(50, seed=1).drop(columns=["age"]).to_csv(folder / "no_age.csv", index=False)
    passengers(50, seed=1).to_csv(folder / "small.csv", index=False)
    (folder / "exists.parquet").write_bytes(b"")
    (folder / "a_folder").mkdir()
    mixed = folder / "mixed"
    mixed.mkdir()
    part = passengers(50, seed=1, flawed=False)
    part.to_parquet(mixed / "part-0.parquet")
    part.assign(row_id=part["row_id"].astype(str)).to_parquet(mixed / "part-1.parquet")
    columns = [pa.array(part[name]) for name in part.columns]
    twice = pa.Table.from_arrays([*columns, pa.array(part["sex"])], names=[*part.columns, "sex"])
    pq.write_table(twice, folder / "sex_twice.parquet")
    listed = pa.Table.from_pandas(part.drop(columns=["sex"]), preserve_index=False)
    listed = listed.append_column("sex", pa.array([[value] for value in part["sex"]], pa.list_(pa.string())))
    pq.write_table(listed, folder / "sex_as_lists.parquet")
    as_bytes = listed.drop_columns(["sex"]).append_column("sex", pa.array([v.encode() for v in part["sex"]]))
    pq.write_table(as_bytes, folder / "sex_as_bytes.parquet")
    repeated_later = folder / "repeated_later"
    repeated_later.mkdir()
    part.to_parquet(repeated_later / "part-0.parquet")
    pq.write_table(twice, repeated_later / "part-1.parquet")
    before = listing(folder)
    out = str(folder / "out.parquet")
    cases = {
        "does not exist": ["--model", "titanic", "--input", str(folder / "absent.csv"), "--output", out],
        "not in the model store": ["--model", "titanic:v9", "--input", str(table), "--output", out],
        "not served by the routing": ["--model", "nosuch", "--input", str(table), "--output", out],
        "cannot read": ["--model", "titanic", "--input", str(folder / "garbage.parquet"), "--output", out],
        "lacks the column 'age'": ["--model", "titanic", "--input", str(folder / "no_age.csv"), "--output", out],
        "--keep names 'nope'": ["--model", "titanic", "--input", str(table), "--output", out, "--keep", "nope"],
        "exists; pass --overwrite": [
            *["--model", "titanic", "--input", str(folder / "small.csv")],
            *["--output", str(folder / "exists.parquet")],
        ],
        "is a folder; the local engine writes one Parquet file": [
            *["--model", "titanic", "--input", str(folder / "small.csv")],
            *["--output", str(folder / "a_folder"), "--overwrite"],
        ],
        "the column 'row_id' is int64 in the parts before": [
            *["--model", "titanic", "--input", str(mixed), "--output", out, "--keep", ID],
        ],
        "the input has 2 columns named 'sex'; rename or remove one": [
            *["--model", "titanic", "--input", str(folder / "sex_twice.parquet"), "--output", out],
        ],
        "part-1.parquet' has other columns than": [
            *["--model", "titanic", "--input", str(repeated_later), "--output", out],
        ],
        "the column 'sex' is list<element: string>, not one number or text per row": [
            *["--model", "titanic", "--input", str(folder / "sex_as_lists.parquet"), "--output", out],
        ],
        "the column 'sex' is binary, not one number or text per row": [
            *["--model", "titanic", "--input", str(folder / "sex_as_bytes.parquet"), "--output", out],
        ],
    }
    for words, args in cases.items():
        assert run(*args) == 2, words
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (words, err)
        assert listing(folder) == before, words


def test_too_many_invalid_rows_exit_3_and_write_nothing(
    trained_default_models: list[str], table: Path, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = folder / "out.parquet"
    assert run("--model", "titanic", "--input", str(table), "--output", str(out), "--max-invalid", "0.001") == 3
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"error: [\d,]+ of 200,000 rows \([\d.]+%\) are invalid, more than --max-invalid 0.001 "
        r"allows \(200\); nothing was written",
        error,
    ), error
    assert listing(folder) == []
    assert run("--model", "titanic", "--input", str(table), "--output", str(out), "--max-invalid", "100") == 3
    assert listing(folder) == []


def test_a_share_of_invalid_rows_allows_exactly_that_share_and_bad_options_exit_2(
    trained_default_models: list[str], folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = passengers(100, seed=2, flawed=False)
    rows.loc[:28, "sex"] = "unknown"  # 29 of 100 rows invalid
    rows.to_csv(folder / "some_invalid.csv", index=False)
    common = ["--model", "titanic", "--input", str(folder / "some_invalid.csv")]
    assert run(*common, "--output", str(folder / "a.parquet"), "--max-invalid", "0.29") == 0
    assert run(*common, "--output", str(folder / "b.parquet"), "--max-invalid", "0.28") == 3
    assert "more than --max-invalid 0.28 allows (28)" in capsys.readouterr().err
    for option, value in (("--max-invalid", "inf"), ("--max-invalid", "nan"), ("--batch-rows", "0")):
        with pytest.raises(SystemExit) as exited:
            run(*common, "--output", str(folder / "c.parquet"), option, value)
        assert exited.value.code == 2
        assert f"argument {option}: must be" in capsys.readouterr().err
    # Replacing an output that had a drift report with one that has none (no rows) removes
    # the old report: a report beside an output describes that output.
    assert (folder / "a.parquet.drift.json").exists()
    rows.iloc[:0].to_csv(folder / "header_only.csv", index=False)
    again = ["--model", "titanic", "--input", str(folder / "header_only.csv"), "--output", str(folder / "a.parquet")]
    assert run(*again, "--overwrite") == 0
    assert pq.read_metadata(folder / "a.parquet").num_rows == 0
    assert not (folder / "a.parquet.drift.json").exists()


def test_the_command_line_chooses_the_routings_tag_and_exits_2(
    trained_default_models: list[str], tmp_path: Path
) -> None:
    """The real command in its own process: what it prints, and its exit code."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scoring",
            "--model",
            "titanic",
            "--input",
            str(tmp_path / "x.csv"),
            "--output",
            str(tmp_path / "out.parquet"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert "titanic: scoring with titanic:v1 (the routing's variant with the largest weight, 100 of 100)" in done.stdout
    assert done.stderr.strip() == f"error: input '{tmp_path / 'x.csv'}' does not exist"
