"""Prediction ids: what they carry comes back intact; any altered byte, another secret or
another format is refused; a rotated secret still verifies the ids of the previous one."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from model_server.config.auth import load_prediction_secrets
from model_server.config.settings import ServerSettings
from model_server.monitoring.prediction_ids import BINARY, MULTICLASS, REGRESSION, InvalidId, PredictionIds

SECRET = b"a secret of thirty-two bytes...."
SETTINGS = {"models": {"iris": {"variants": [{"tag": "iris:v1"}]}}}


def test_binary_ids_carry_the_class_and_the_positive_probability() -> None:
    ids = PredictionIds([SECRET])
    output = np.array([[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]])
    signed = ids.sign("titanic", "titanic:v2", 77, 1_700_000_000_123, output, classifier=True)
    read = [ids.verify(i) for i in signed]
    assert [r.predicted for r in read] == [1, 0, 0]  # a tie goes to the first class, as argmax
    assert [r.probabilities[1] for r in read] == [0.75, 0.1, 0.5]
    assert {(r.name, r.tag, r.window, r.time_ms, r.kind) for r in read} == {
        ("titanic", "titanic:v2", 77, 1_700_000_000_123, BINARY)
    }
    assert [r.row for r in read] == [0, 1, 2]
    assert len({r.digest for r in read}) == 3 and len({r.request for r in read}) == 1
    assert not read[0].keyed and read[0].unit == int.from_bytes(read[0].request, "little")


def test_multiclass_and_regression_ids_and_caller_keys() -> None:
    ids = PredictionIds([SECRET])
    [iris] = ids.sign("iris", "iris:v1", 1, 2, np.array([[0.1, 0.7, 0.2]]), True, key="caller-1")
    read = ids.verify(iris)
    assert read.kind == MULTICLASS and read.predicted == 1 and read.probabilities == (0.1, 0.7, 0.2)
    assert read.keyed
    [again] = ids.sign("iris", "iris:v1", 1, 3, np.array([[0.1, 0.7, 0.2]]), True, key="caller-1")
    [other] = ids.sign("iris", "iris:v1", 1, 3, np.array([[0.1, 0.7, 0.2]]), True, key="caller-2")
    assert ids.verify(again).unit == read.unit != ids.verify(other).unit
    values = ids.sign("diabetes", "diabetes:v1", 1, 2, np.array([151.5, -3.25]), classifier=False)
    assert [ids.verify(v).value for v in values] == [151.5, -3.25]
    assert ids.verify(values[0]).kind == REGRESSION


def test_every_altered_byte_another_secret_and_garbage_are_refused() -> None:
    ids = PredictionIds([SECRET])
    [signed] = ids.sign("titanic", "titanic:v1", 5, 6, np.array([[0.3, 0.7]]), True)
    raw = base64.urlsafe_b64decode(signed + "=" * (-len(signed) % 4))
    for position in range(len(raw)):
        altered = bytearray(raw)
        altered[position] ^= 0x40
        with pytest.raises(InvalidId):
            ids.verify(base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode())
    with pytest.raises(InvalidId, match="signature"):
        PredictionIds([b"another secret, 32 bytes long..."]).verify(signed)
    for garbage in ("", "x" * 50, "!" * 60, 12, None, signed[:-4]):
        with pytest.raises(InvalidId):
            ids.verify(garbage)


def test_a_rotated_secret_keeps_verifying_the_previous_ones_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "prediction-secret"
    path.write_text("old secret of sixteen+ bytes\n")
    settings = ServerSettings.model_validate({**SETTINGS, "prediction_secret_file": str(path)})
    [before] = PredictionIds(load_prediction_secrets(settings)).sign("iris", "iris:v1", 1, 2, np.eye(3)[:1], True)
    path.write_text("new secret of sixteen+ bytes\nold secret of sixteen+ bytes\n")
    rotated = PredictionIds(load_prediction_secrets(settings))
    assert rotated.verify(before).tag == "iris:v1"
    [after] = rotated.sign("iris", "iris:v1", 1, 2, np.eye(3)[:1], True)
    with pytest.raises(InvalidId):
        PredictionIds([b"old secret of sixteen+ bytes"]).verify(after)


def test_the_secret_is_made_once_per_store_and_short_ones_are_refused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    settings = ServerSettings.model_validate(SETTINGS)
    first = load_prediction_secrets(settings)
    assert load_prediction_secrets(settings) == first and len(first[0]) >= 32
    assert (tmp_path / "prediction-secret").stat().st_mode & 0o777 == 0o600
    short = tmp_path / "short"
    short.write_text("tiny\n")
    from model_server.config.settings import SettingsError

    with pytest.raises(SettingsError, match="prediction_secret_file"):
        load_prediction_secrets(ServerSettings.model_validate({**SETTINGS, "prediction_secret_file": str(short)}))
