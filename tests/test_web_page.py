"""The web page /ui in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against a real `bentoml serve`, as a first-time visitor uses it:
forms built from the training schema and checked before they are sent, real training
rows as examples, answers and explanations checked against the JSON API's, the request
as JSON and curl, CSV scoring in parts, model cards, drift held back on few rows, API
keys, tabs, phone width, and axe-core with no violations at desktop and phone sizes.

Screenshots are written only when asked for: `make docs-images` sets
MODEL_SERVER_SCREENSHOTS=docs/images.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sklearn import datasets

from model_server.local_server import ONE_WORKER, RunningServer, start_server
from model_server.models import registry
from model_server.models.drift_reference import MINIMUM_ROWS
from tests.waiting import settled
from training import tables

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = os.environ.get("MODEL_SERVER_SCREENSHOTS")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
WAIT = 60
KEY = "web-page-key"
DESKTOP = "1280,900"  # the window, in CSS pixels


def _require(path: str, package: str) -> None:
    if shutil.which(Path(path).name) is None and not Path(path).exists():
        pytest.fail(f"{path} is missing: install the Debian package '{package}' (make tools does it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, a desktop-sized window."""
    _require(CHROMIUM, "chromium")
    _require(CHROMEDRIVER, "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={DESKTOP}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """The project's configuration, served for this module alone: the drift windows hold
    only the rows these tests send."""
    running = start_server(ROOT / "configuration.yaml", ONE_WORKER)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def keyed_server(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """API keys on and drift counting off (its route answers 409): one worker serving iris only."""
    config = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    block = config["services"]["TabularModelServer"]
    block["workers"] = 1
    block["model_server"]["models"] = {"iris": block["model_server"]["models"]["iris"]}
    path = tmp_path_factory.mktemp("web-page") / "configuration.yaml"
    path.write_text(yaml.safe_dump(config))
    running = start_server(path, {"MODEL_SERVER_API_KEYS": KEY, "MODEL_SERVER_DRIFT_COUNTING": "false"})
    try:
        yield running
    finally:
        running.stop()


# ---- helpers ----------------------------------------------------------------------


def wait_for(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT).until(condition)
    except Exception as exc:
        logs = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        errors = [e.text for e in driver.find_elements("css selector", ".error") if e.is_displayed()]
        raise AssertionError(f"{message}; the page's errors: {errors}; the browser's console:\n{logs}") from exc


def visible(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    def shown(d: Any) -> Any:
        found = d.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else False

    return wait_for(driver, shown, f"{css} never showed")


def by_id(driver: Any, name: str) -> Any:
    return driver.find_element("id", name)


def open_model(driver: Any, server: RunningServer, name: str) -> None:
    """Load /ui and open one model from the list of served models; the form is complete
    once every tag's card has said which features may stay empty."""
    driver.get(f"{server.url}/ui")
    visible(driver, f'#models-table button[data-model="{name}"]').click()
    visible(driver, f'#model-panel[data-ready="{name}"] #features [data-feature]')


def tab(driver: Any, name: str) -> None:
    by_id(driver, f"tab-{name}").click()
    visible(driver, f"#panel-{name}")


def fill(driver: Any, values: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import Select

    for name, value in values.items():
        field = driver.find_element("css selector", f'#features [data-feature="{name}"]')
        if field.tag_name == "select":
            Select(field).select_by_value("" if value is None else str(value))
        else:
            field.clear()
            if value is not None:
                field.send_keys(str(value))


def predict(driver: Any, press: Any = None) -> None:
    """Press Predict (or do `press`) and wait until the page has shown the answer or refusal."""
    before = driver.execute_script("return Number(document.getElementById('answer').dataset.answers || 0)")
    (press or by_id(driver, "predict-button").click)()
    wait_for(
        driver,
        lambda d: d.execute_script("return Number(document.getElementById('answer').dataset.answers || 0)") > before,
        "the page showed no answer",
    )


def shown_answer(driver: Any) -> dict[str, Any]:
    """What the page shows after a prediction: class or value, probabilities, tag, notes."""
    visible(driver, "#prediction")
    bars = driver.find_elements("css selector", "#probabilities li")
    return {
        "prediction": by_id(driver, "predicted").get_attribute("data-value"),
        "probabilities": {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars},
        "tag": by_id(driver, "answer-tag").text,
        "latency": by_id(driver, "answer-latency").text,
        "warnings": [li.text for li in driver.find_elements("css selector", "#answer-warnings li")],
        "outside": by_id(driver, "outside-badge").is_displayed(),
        "missing": by_id(driver, "missing-note").text if by_id(driver, "missing-note").is_displayed() else None,
    }


def api_answer(
    server: RunningServer, name: str, record: dict[str, Any], version: str, explain: bool = False
) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/v1/models/{name}/versions/{version}/predict",
        json={"instances": [record], **({"explain": True} if explain else {})},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def shown_explanation(driver: Any) -> dict[str, Any]:
    """What the page shows of an explanation: contributions in the order shown, base value, output."""
    visible(driver, "#explanation")
    items = driver.find_elements("css selector", "#contributions li[data-feature]")
    return {
        "contributions": {i.get_attribute("data-feature"): float(i.get_attribute("data-contribution")) for i in items},
        "texts": [i.find_element("css selector", ".value").text for i in items],
        "base": float(by_id(driver, "explain-base").get_attribute("data-value")),
        "output": float(by_id(driver, "explain-output").get_attribute("data-value")),
        "summary": by_id(driver, "explanation-summary").text,
    }


def largest(contributions: dict[str, float], count: int = 5) -> list[str]:
    return sorted(contributions, key=lambda f: -abs(contributions[f]))[:count]


def api_drift(server: RunningServer, tag: str) -> dict[str, Any]:
    name, version = tag.split(":")
    answer = httpx.get(f"{server.url}/v1/models/{name}/versions/{version}/drift", timeout=30)
    assert answer.status_code == 200, answer.text
    [found] = answer.json()["tags"]
    return dict(found)


def select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, element_id)).select_by_value(value)


def download(driver: Any) -> str:
    """The text of the CSV download the page built."""
    return str(
        driver.execute_async_script(
            "const done = arguments[0]; fetch(document.getElementById('csv-download').href)"
            ".then(r => r.text()).then(done, e => done(String(e)))"
        )
    )


def score_file(driver: Any, path: Path) -> str:
    tab(driver, "csv")
    by_id(driver, "csv-file").send_keys(str(path))
    by_id(driver, "csv-score").click()
    return str(visible(driver, "#csv-summary").text)


def screenshot(driver: Any, css: str | None, name: str) -> None:
    """A PNG of one element, whole even where it runs past the window (or of the window as
    it is seen, without `css`); only when asked for."""
    if not SCREENSHOTS:
        return
    if css is None:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {})
    else:
        # Capturing beyond the window drops the scroll bar, which widens the layout: measure
        # without it too.
        box = driver.execute_script(
            "document.documentElement.style.scrollbarWidth = 'none';"
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height, scale: 1};",
            css,
        )
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"clip": box, "captureBeyondViewport": True})
        driver.execute_script("document.documentElement.style.scrollbarWidth = ''")
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    (Path(SCREENSHOTS) / name).write_bytes(base64.b64decode(shot["data"]))


def phone(driver: Any) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True}
    )


def axe_violations(driver: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (WCAG 2.x A and AA, best practices)."""
    if not driver.execute_script("return typeof axe !== 'undefined'"):
        driver.execute_script(AXE.read_text() + "\n;window.axe = axe;")
    result = driver.execute_async_script(
        "const done = arguments[0];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))), e => done([{id: 'error', help: String(e), nodes: []}]));"
    )
    return list(result)


# ---- the page, its assets, the list of models --------------------------------------


def test_the_page_is_served_open_with_its_own_assets_only(page: RunningServer) -> None:
    answer = httpx.get(f"{page.url}/ui", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", answer.text)  # nothing from elsewhere
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        asset = httpx.get(f"{page.url}{path}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), path
        assert "http://" not in asset.text and "https://" not in asset.text, path
    root = httpx.get(f"{page.url}/docs.json", timeout=10).json()
    assert "[/ui](/ui)" in root["paths"]["/predict"]["post"]["description"]  # linked from BentoML's page


def test_numeric_form_answers_what_the_api_answers_beside_the_form(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "iris")
    assert by_id(browser, "intro").text.startswith("Pick a model, fill in the form")
    assert not by_id(browser, "key-form").is_displayed()  # this server has no API keys
    # The open model stands out in the list.
    row = browser.find_element("css selector", '#models-table tr[data-model="iris"]')
    assert "selected" in row.get_attribute("class").split()
    assert row.find_element("tag name", "button").get_attribute("aria-current") == "true"
    record = {"sepal length (cm)": 6.1, "sepal width (cm)": 2.8, "petal length (cm)": 4.7, "petal width (cm)": 1.2}
    fill(browser, record)
    select(browser, "version", "v1")
    predict(browser)
    shown = shown_answer(browser)
    expected = api_answer(page, "iris", record, "v1")
    assert shown["tag"] == expected["tag"] == "iris:v1"
    assert shown["prediction"] == expected["predictions"][0] == "versicolor"
    assert list(shown["probabilities"]) == expected["classes"]
    assert list(shown["probabilities"].values()) == pytest.approx(expected["probabilities"][0], abs=1e-12)
    assert re.fullmatch(r"\d+\.\d ms", shown["latency"])
    assert shown["warnings"] == [] and not shown["outside"] and shown["missing"] is None
    # Every input has a label, and each numeric input says its training range.
    for field in browser.find_elements("css selector", "#features [data-feature]"):
        label = browser.find_element("css selector", f'label[for="{field.get_attribute("id")}"]')
        assert label.text == field.get_attribute("data-feature")
        hint = by_id(browser, field.get_attribute("aria-describedby").split()[0]).text
        assert hint.startswith("Training range")
    assert by_id(browser, "form-note").text == "Every feature may be left empty: the model fills it in."
    # On a desktop the answer sits to the right of the form, level with it.
    form = by_id(browser, "predict-form").rect
    answer = by_id(browser, "answer").rect
    assert answer["x"] >= form["x"] + form["width"] and abs(answer["y"] - form["y"]) < 5
    screenshot(browser, "#model-panel", "web-page-predict.png")


def test_the_answer_stays_in_view_while_a_long_form_scrolls(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "breast_cancer")
    by_id(browser, "example-button").click()
    predict(browser)
    visible(browser, "#prediction")
    browser.execute_script("document.getElementById('predict-button').scrollIntoView({block: 'end'})")
    top, height = browser.execute_script(
        "return [document.getElementById('answer').getBoundingClientRect().top, innerHeight]"
    )
    assert browser.execute_script("return scrollY") > 300  # the form is long: the page did scroll
    assert 0 <= top < 50, f"the answer panel is at {top} px in a {height} px window"


def test_changing_the_model_in_the_address_opens_it_and_tabs_follow_the_arrow_keys(
    browser: Any, page: RunningServer
) -> None:
    from selenium.webdriver.common.keys import Keys

    open_model(browser, page, "iris")
    browser.execute_script("location.hash = '#titanic'")
    visible(browser, '#model-panel[data-ready="titanic"]')
    assert by_id(browser, "model-title").text == "titanic (classification)"
    selected = browser.find_elements("css selector", "#models-table tr.selected")
    assert [r.get_attribute("data-model") for r in selected] == ["titanic"]
    by_id(browser, "tab-try").send_keys(Keys.ARROW_RIGHT)
    assert by_id(browser, "tab-csv").get_attribute("aria-selected") == "true"
    assert browser.switch_to.active_element.get_attribute("id") == "tab-csv"
    assert by_id(browser, "panel-csv").is_displayed() and not by_id(browser, "panel-try").is_displayed()
    by_id(browser, "tab-csv").send_keys(Keys.END)
    assert by_id(browser, "tab-compare").get_attribute("aria-selected") == "true"
    assert by_id(browser, "panel-compare").is_displayed()
    by_id(browser, "tab-compare").send_keys(Keys.ARROW_RIGHT)  # wraps round to the first
    assert by_id(browser, "tab-try").get_attribute("aria-selected") == "true"


# ---- checked inputs ------------------------------------------------------------------


def predict_requests(driver: Any) -> int:
    return int(
        driver.execute_script(
            "return performance.getEntriesByType('resource').filter(e => e.name.endsWith('/predict')).length"
        )
    )


def field_check(driver: Any, feature: str) -> tuple[str, str]:
    field = driver.find_element("css selector", f'#features [data-feature="{feature}"]')
    check = by_id(driver, f"{field.get_attribute('id')}-check")
    return check.text, check.get_attribute("class")


def test_numbers_the_browser_cannot_read_are_refused_in_the_field_and_never_sent(
    browser: Any, page: RunningServer
) -> None:
    open_model(browser, page, "iris")
    by_id(browser, "example-button").click()
    feature = "sepal length (cm)"
    field = browser.find_element("css selector", f'#features [data-feature="{feature}"]')
    for typed, words in (
        ("abc", '"abc" is not a number'),
        ("1e400", '"1e400" is too large to be a number'),
        ("1,500", '"1,500" is ambiguous: write 1.500 or 1500'),
        ("5.1.2", '"5.1.2" is not a number'),
    ):
        fill(browser, {feature: typed})
        text, kind = field_check(browser, feature)
        assert text.startswith(words) and "field-error" in kind, (typed, text)
        assert field.get_attribute("aria-invalid") == "true"
        before = predict_requests(browser)
        predict(browser)
        error = visible(browser, "#predict-error").text
        assert error.startswith("Error: nothing was sent; fix this field: sepal length (cm): "), error
        assert predict_requests(browser) == before  # nothing went to the server
        assert browser.switch_to.active_element.get_attribute("id") == field.get_attribute("id")
    # A comma that can only be a decimal point is read as one, and the page says what it sends.
    fill(browser, {feature: "5,8"})
    assert field_check(browser, feature)[0] == "sent as 5.8"
    assert field.get_attribute("aria-invalid") is None
    select(browser, "version", "v1")
    predict(browser)
    shown = shown_answer(browser)
    record = {
        f.get_attribute("data-feature"): float(f.get_attribute("value").replace(",", "."))
        for f in browser.find_elements("css selector", "#features [data-feature]")
    }
    assert record[feature] == 5.8
    expected = api_answer(page, "iris", record, "v1")
    assert shown["probabilities"] == dict(zip(expected["classes"], expected["probabilities"][0], strict=True))
    by_id(browser, "show-request").find_element("tag name", "summary").click()
    assert '"sepal length (cm)": 5.8' in by_id(browser, "request-json").text


def test_a_value_outside_the_training_range_warns_in_the_field_and_in_the_answer(
    browser: Any, page: RunningServer
) -> None:
    open_model(browser, page, "iris")
    width = registry.stored_schema("iris:v1").features[3]
    record = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, width.name: width.max + 1}
    fill(browser, record)
    text, kind = field_check(browser, width.name)
    assert "field-warning" in kind
    assert text.startswith(f"outside the training range {width.min:g} to {width.max:g}"), text
    select(browser, "version", "v1")
    predict(browser)
    shown = shown_answer(browser)
    expected = api_answer(page, "iris", record, "v1")
    assert shown["outside"] and shown["warnings"] == expected["warnings"]
    assert expected["warnings"] == [
        f"{width.name}: {width.max + 1:.6g} is outside the training range {width.min:.6g} to {width.max:.6g}"
    ]
    assert shown["prediction"] == expected["predictions"][0]


def test_an_empty_form_says_how_many_features_the_model_filled_in(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "iris")
    select(browser, "version", "v1")
    predict(browser)
    shown = shown_answer(browser)
    assert shown["missing"] == "4 of 4 features missing, filled in by the model."
    expected = api_answer(page, "iris", dict.fromkeys(registry.stored_schema("iris:v1").names), "v1")
    assert shown["prediction"] == expected["predictions"][0]


# ---- examples, categories, caller keys -------------------------------------------------


def test_examples_are_real_training_rows_with_whole_numbers_for_counts(browser: Any, page: RunningServer) -> None:
    from selenium.webdriver.support.ui import Select

    open_model(browser, page, "titanic")
    stored = registry.load("titanic:v1").metadata["examples"]
    choices = Select(by_id(browser, "example-choice")).options
    assert [c.text for c in choices] == [f"A training row of class {e['target']}" for e in stored]
    frame = tables.titanic().frame
    passengers = {tuple("" if v != v else v for v in row) for row in frame.itertuples(index=False)}
    numeric = ("age", "sibsp", "parch")
    for index, example in enumerate(stored):
        select(browser, "example-choice", str(index))
        by_id(browser, "example-button").click()
        shown = {
            f.get_attribute("data-feature"): f.get_attribute("value")
            for f in browser.find_elements("css selector", "#features [data-feature]")
        }
        values = example["values"]
        assert shown == {n: "" if values.get(n) is None else str(values[n]) for n in frame.columns}
        assert re.fullmatch(r"\d+", shown["parch"]) and re.fullmatch(r"\d+", shown["sibsp"])
        row = tuple((float(shown[c]) if shown[c] else "") if c in numeric else shown[c] for c in frame.columns)
        assert row in passengers  # a passenger of the data set, not a made-up one


def test_categorical_form_offers_the_training_categories_and_answers_what_the_api_answers(
    browser: Any, page: RunningServer
) -> None:
    from selenium.webdriver.common.keys import Keys

    open_model(browser, page, "titanic")
    pclass = browser.find_element("css selector", '#features [data-feature="pclass"]')
    assert pclass.tag_name == "select"
    options = [o.get_attribute("value") for o in pclass.find_elements("tag name", "option")]
    assert options == ["", "1st", "2nd", "3rd"]  # "" is the missing value the imputer fills
    record = {"pclass": "3rd", "sex": "male", "age": None, "sibsp": 1, "parch": 0}
    fill(browser, record)
    select(browser, "version", "v1")
    # Keyboard only: Enter in a field submits the form.
    parch = browser.find_element("css selector", '#features [data-feature="parch"]')
    predict(browser, lambda: parch.send_keys(Keys.ENTER))
    shown = shown_answer(browser)
    expected = api_answer(page, "titanic", record, "v1")
    assert shown["prediction"] == expected["predictions"][0]
    assert list(shown["probabilities"]) == expected["classes"] == ["died", "survived"]
    assert list(shown["probabilities"].values()) == pytest.approx(expected["probabilities"][0], abs=1e-12)
    assert shown["missing"] == "1 of 5 features missing, filled in by the model."


def test_a_caller_key_keeps_the_page_on_the_tag_the_api_gives_that_key(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "iris")
    by_id(browser, "example-button").click()
    by_id(browser, "caller-key").send_keys("analyst-7")
    predict(browser)
    tag = shown_answer(browser)["tag"]
    record = {
        f.get_attribute("data-feature"): float(f.get_attribute("value"))
        for f in browser.find_elements("css selector", "#features [data-feature]")
    }
    answer = httpx.post(
        f"{page.url}/v1/models/iris/predict",
        json={"instances": [record]},
        headers={"X-Request-Key": "analyst-7"},
        timeout=30,
    )
    assert answer.json()["tag"] == tag


def test_show_request_gives_the_json_and_a_curl_command_that_answers_the_same(
    browser: Any, page: RunningServer
) -> None:
    open_model(browser, page, "iris")
    by_id(browser, "example-button").click()
    select(browser, "version", "v2")
    by_id(browser, "caller-key").send_keys("it's me")  # a quote the shell must keep
    predict(browser)
    shown = shown_answer(browser)
    by_id(browser, "show-request").find_element("tag name", "summary").click()
    body = by_id(browser, "request-json").text
    command = by_id(browser, "request-curl").text
    assert command.startswith(f"curl -s -X POST '{page.url}/v1/models/iris/versions/v2/predict'")
    assert "-H 'X-Request-Key: it'\\''s me'" in command
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(ran.stdout)
    assert answer["tag"] == shown["tag"] == "iris:v2"
    assert answer["probabilities"][0] == list(shown["probabilities"].values())
    assert json.loads(body)["instances"][0] == {
        f.get_attribute("data-feature"): float(f.get_attribute("value"))
        for f in browser.find_elements("css selector", "#features [data-feature]")
    }
    # The copy button puts the same command on the clipboard.
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": page.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    by_id(browser, "copy-curl").click()
    wait_for(browser, lambda d: d.find_element("id", "copy-status").text == "Copied.", "not copied")
    copied = browser.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done(String(e)))"
    )
    assert copied == command


# ---- explanations ----------------------------------------------------------------------


def check_explanation(driver: Any, expected: dict[str, Any], sign: float) -> dict[str, Any]:
    """The page's explanation equals the API's, times `sign` (-1: the other class's log-odds)."""
    shown = shown_explanation(driver)
    explanation = expected["explanation"]
    contributions = {f: sign * v for f, v in explanation["contributions"][0].items()}
    assert list(shown["contributions"]) == largest(contributions)
    for feature, value in shown["contributions"].items():
        assert abs(value - contributions[feature]) <= 1e-9, feature
    for text, feature in zip(shown["texts"], shown["contributions"], strict=True):
        assert text[0] == ("+" if contributions[feature] > 0 else "-"), (feature, text)
    assert abs(shown["base"] - sign * explanation["base_value"]) <= 1e-9
    assert abs(shown["output"] - sign * explanation["outputs"][0]) <= 1e-9
    return shown


def test_explain_on_the_titanic_form_shows_the_apis_contributions_and_base_value(
    browser: Any, page: RunningServer
) -> None:
    from selenium.webdriver.common.keys import Keys

    open_model(browser, page, "titanic")
    record = {"pclass": "1st", "sex": "female", "age": 30, "sibsp": 0, "parch": 0}
    fill(browser, record)
    select(browser, "version", "v1")
    by_id(browser, "explain").send_keys(Keys.SPACE)  # a checkbox, ticked from the keyboard
    assert by_id(browser, "explain").is_selected()
    predict(browser)
    expected = api_answer(page, "titanic", record, "v1", explain=True)
    # The API explains the second class, "survived": here the predicted one, as it is.
    assert shown_answer(browser)["prediction"] == expected["predictions"][0] == expected["explanation"]["class"]
    shown = check_explanation(browser, expected, 1.0)
    assert 'log-odds of "survived", the predicted class' in shown["summary"], shown["summary"]
    assert "(log-odds)" in by_id(browser, "explain-base").text
    # Unticked, the next answer carries no explanation and the page shows none.
    by_id(browser, "explain").click()
    predict(browser)
    wait_for(browser, lambda d: not d.find_element("id", "explanation").is_displayed(), "the explanation stayed")


def test_a_binary_explanation_is_shown_towards_the_predicted_class(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "breast_cancer")
    stored = registry.load("breast_cancer:v1").metadata["examples"]
    [index] = [i for i, e in enumerate(stored) if e["target"] == "malignant"]
    record = stored[index]["values"]
    select(browser, "example-choice", str(index))
    by_id(browser, "example-button").click()
    select(browser, "version", "v1")
    by_id(browser, "explain").click()
    predict(browser)
    expected = api_answer(page, "breast_cancer", record, "v1", explain=True)
    explanation = expected["explanation"]
    # The API explains the log-odds of "benign"; the page turns them towards "malignant".
    assert expected["predictions"][0] == "malignant" and explanation["class"] == "benign"
    shown = check_explanation(browser, expected, -1.0)
    assert 'log-odds of "malignant", the predicted class' in shown["summary"], shown["summary"]
    assert 'The API explains the log-odds of "benign": the same numbers with the opposite sign' in shown["summary"]
    assert shown["output"] > 0  # towards the class predicted with high probability
    assert sum(shown["contributions"].values()) > 0


def test_a_multi_class_explanation_shows_the_predicted_class(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "iris")
    record = {"sepal length (cm)": 6.1, "sepal width (cm)": 2.8, "petal length (cm)": 4.7, "petal width (cm)": 1.2}
    fill(browser, record)
    select(browser, "version", "v2")
    by_id(browser, "explain").click()
    predict(browser)
    shown = shown_explanation(browser)
    expected = api_answer(page, "iris", record, "v2", explain=True)
    predicted = expected["predictions"][0]
    explanation = expected["explanation"]
    assert predicted in explanation["classes"]
    contributions = explanation["contributions"][0][predicted]
    assert list(shown["contributions"]) == largest(contributions)
    for feature, value in shown["contributions"].items():
        assert abs(value - contributions[feature]) <= 1e-9, feature
    assert abs(shown["base"] - explanation["base_value"][predicted]) <= 1e-9
    assert abs(shown["output"] - explanation["outputs"][0][predicted]) <= 1e-9
    assert f'logit of "{predicted}", the predicted class' in shown["summary"], shown["summary"]


def test_a_value_the_schema_refuses_shows_the_servers_message(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "iris")
    by_id(browser, "example-button").click()
    fill(browser, {"petal width (cm)": "1e300"})
    predict(browser)
    error = visible(browser, "#predict-error").text
    assert error.startswith("400: invalid input: instances[0]['petal width (cm)']"), error


# ---- CSV files ---------------------------------------------------------------------------


def test_a_csv_file_is_scored_into_a_table_and_a_download(browser: Any, page: RunningServer, tmp_path: Path) -> None:
    rows = [
        ("5.1", "3.5", "1.4", "0.2", "setosa"),
        ("6.1", "2.8", "4.7", "1.2", "versicolor"),
        ("6.3", "3.3", "6.0", "2.5", "virginica"),
        ("", "3.0", "5.1", "1.8", "virginica"),  # missing: the model's imputer fills it
    ] * 5
    header = '"sepal length (cm)",sepal width (cm),petal length (cm),petal width (cm),"species, as labelled"'
    path = tmp_path / "flowers.csv"
    path.write_text(header + "\r\n" + "\r\n".join(",".join(r) for r in rows) + "\r\n")
    open_model(browser, page, "iris")
    select(browser, "version", "v2")
    summary = score_file(browser, path)
    assert re.fullmatch(r"20 rows scored by iris:v2 in \d+ ms\.", summary), summary
    table_rows = browser.find_elements("css selector", "#csv-table tbody tr")
    assert len(table_rows) == 20
    columns = [th.text for th in browser.find_elements("css selector", "#csv-table thead th")]
    assert columns[-4:] == ["prediction", "probability setosa", "probability versicolor", "probability virginica"]
    records = [{n: (float(v) if v else None) for n, v in zip(columns[:4], row[:4], strict=True)} for row in rows[:4]]
    expected = httpx.post(f"{page.url}/v1/models/iris/versions/v2/predict", json={"instances": records}).json()
    cells = [td.text for td in table_rows[3].find_elements("tag name", "td")]
    assert cells[4] == "virginica" and cells[5] == expected["predictions"][3]
    assert float(cells[8]) == pytest.approx(expected["probabilities"][3][2], rel=1e-3)
    counts = Counter(expected["predictions"] * 5)
    assert (
        by_id(browser, "csv-counts").text
        == "Predicted: " + ", ".join(f"{c} {counts[c]}" for c in expected["classes"]) + "."
    )
    link = by_id(browser, "csv-download")
    assert link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "flowers-predictions.csv"
    lines = download(browser).strip().split("\r\n")
    assert len(lines) == 21 and lines[0].startswith("sepal length (cm),") and '"species, as labelled"' in lines[0]
    assert lines[4].split(",")[5] == expected["predictions"][3]


def test_the_csv_download_writes_formulas_as_text_and_numbers_as_numbers(
    browser: Any, page: RunningServer, tmp_path: Path
) -> None:
    """OWASP's advice on CSV injection: a cell that starts with =, +, -, @, a tab or a
    carriage return gets a ' in front and quotes; a number (negative too) stays a number."""
    header = 'sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),"=HYPERLINK(""http://x"")",note'
    rows = [
        '-1.5,3.5,1.4,0.2,+SUM(A1:A2),"@cmd"',
        '5.1,3.5,1.4,0.2,"\tTAB",-2+3',
        '6.3,3.3,6.0,2.5,"\rCR",plain',
    ]
    path = tmp_path / "formulas.csv"
    path.write_text(header + "\r\n" + "\r\n".join(rows) + "\r\n")
    open_model(browser, page, "iris")
    score_file(browser, path)
    lines = download(browser).split("\r\n")
    assert lines[0].startswith(
        'sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),"\'=HYPERLINK(""http://x"")",note,'
    )
    assert lines[1].startswith('-1.5,3.5,1.4,0.2,"\'+SUM(A1:A2)","\'@cmd",')
    assert lines[2].startswith('5.1,3.5,1.4,0.2,"\'\tTAB","\'-2+3",')
    assert lines[3].startswith('6.3,3.3,6.0,2.5,"\'\rCR",plain,')
    # The outputs: a class name, then probabilities as plain numbers.
    assert all(not cell.startswith(("=", "+", "@", "'")) for cell in lines[1].split(",")[6:])
    # -1.5 is outside sepal length's training range: the server's warning is listed.
    assert [w.text for w in browser.find_elements("css selector", "#csv-warnings li")][0].startswith(
        "sepal length (cm): 1 of 3 rows are outside the training range"
    )


def iris_rows(count: int) -> list[list[float]]:
    """`count` rows of iris measurements: the data set's, cycled, nudged by 0.1 cm steps."""
    data = datasets.load_iris().data
    return [[round(float(v) + 0.1 * ((i // 150) % 3 - 1), 1) for v in data[i % 150]] for i in range(count)]


def test_a_file_above_the_row_limit_is_scored_in_parts_equal_to_the_apis_answers(
    browser: Any, page: RunningServer, tmp_path: Path
) -> None:
    limit = httpx.get(f"{page.url}/v1/limits", timeout=10).json()["max_rows_per_request"]
    rows = iris_rows(5000)
    assert len(rows) > 4 * limit
    names = registry.stored_schema("iris:v1").names
    path = tmp_path / "many.csv"
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    open_model(browser, page, "iris")
    select(browser, "version", "v1")
    summary = score_file(browser, path)
    parts = -(-len(rows) // limit)
    assert re.fullmatch(rf"5,000 rows scored by iris:v1 in {parts} requests in \d+ ms\.", summary), summary
    progress = by_id(browser, "csv-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "5000"
    assert re.fullmatch(r"5,000 of 5,000 rows scored, [\d,]+ rows/s", by_id(browser, "csv-progress-text").text)
    want: dict[str, list[Any]] = {"predictions": [], "probabilities": []}
    for start in range(0, len(rows), limit):
        answer = httpx.post(
            f"{page.url}/v1/models/iris/versions/v1/predict", json={"instances": rows[start : start + limit]}
        ).json()
        want["predictions"] += answer["predictions"]
        want["probabilities"] += answer["probabilities"]
    table = list(csv.reader(io.StringIO(download(browser))))
    assert table[0] == [*names, "prediction", "probability setosa", "probability versicolor", "probability virginica"]
    assert len(table) == len(rows) + 1
    for i, line in enumerate(table[1:]):
        assert [float(v) for v in line[:4]] == rows[i]
        assert line[4] == want["predictions"][i]
        assert [float(v) for v in line[5:]] == want["probabilities"][i], i  # every digit
    # The page previews the first rows and counts every row per class.
    assert len(browser.find_elements("css selector", "#csv-table tbody tr")) == 20
    assert by_id(browser, "csv-preview-title").text == "The first 20 of 5,000 rows"
    counts = Counter(want["predictions"])
    shown = json.loads(by_id(browser, "csv-counts").get_attribute("data-counts"))
    assert shown == {c: counts[c] for c in ("setosa", "versicolor", "virginica")}


def test_scoring_a_file_in_parts_can_be_cancelled(browser: Any, page: RunningServer, tmp_path: Path) -> None:
    names = registry.stored_schema("iris:v1").names
    path = tmp_path / "cancelled.csv"
    path.write_text(",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in iris_rows(3000)))
    open_model(browser, page, "iris")
    browser.execute_cdp_cmd("Network.enable", {})
    # A slow network: each part takes a second and more, time enough to press Cancel.
    slow = {"offline": False, "latency": 1500, "downloadThroughput": -1, "uploadThroughput": -1}
    browser.execute_cdp_cmd("Network.emulateNetworkConditions", slow)
    try:
        tab(browser, "csv")
        by_id(browser, "csv-file").send_keys(str(path))
        by_id(browser, "csv-score").click()
        wait_for(browser, lambda d: d.find_element("id", "csv-progress").get_attribute("value") == "1000", "no part")
        visible(browser, "#csv-cancel").click()
        error = visible(browser, "#csv-error").text
    finally:
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        browser.execute_cdp_cmd("Network.disable", {})
    assert error == "Error: cancelled after 1,000 rows; nothing was kept"
    assert not by_id(browser, "csv-result").is_displayed() and not by_id(browser, "csv-cancel").is_displayed()


# ---- cards, drift, comparison -----------------------------------------------------------


def test_the_model_card_shows_what_training_stored(browser: Any, page: RunningServer) -> None:
    open_model(browser, page, "titanic")
    tab(browser, "card")
    visible(browser, "#model-card h3")
    stored = registry.load("titanic:v1").metadata
    shown = browser.find_element("css selector", '#card-metrics tr[data-metric="holdout_accuracy"] td')
    assert float(shown.get_attribute("data-value")) == stored["metrics"]["holdout_accuracy"]
    text = by_id(browser, "model-card").text
    for fact in (stored["data_sha256"], stored["command"], str(stored["training_rows"]), "1st, 2nd, 3rd"):
        assert fact in text
    assert re.search(r"Registered\n\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text), text
    screenshot(browser, "#model-panel", "web-page-card.png")


def test_drift_is_held_back_on_few_rows_then_read_per_feature_with_its_bins(browser: Any, page: RunningServer) -> None:
    tag = "titanic:v1"
    before = api_drift(page, tag)["window"]["rows"]
    assert before < MINIMUM_ROWS  # this module's own server: only its tests' rows
    thresholds = httpx.get(f"{page.url}/v1/models/titanic/versions/v1/drift", timeout=30).json()["thresholds"]
    assert thresholds["minimum_rows"] == MINIMUM_ROWS  # the page reads the minimum from the answer
    open_model(browser, page, "titanic")
    tab(browser, "drift")
    message = visible(browser, '#drift[data-tag="titanic:v1"] #drift-message').text
    assert f"Fewer than {MINIMUM_ROWS} rows give no reading" in by_id(browser, "drift-hint").text
    assert message == f"{before} {'row' if before == 1 else 'rows'}: at least {MINIMUM_ROWS} needed for a reading."
    assert not by_id(browser, "drift-result").is_displayed()  # no PSI, no "significant" on a few rows
    # Rows far from the training data, through the API: every feature lands in one bin.
    rows = [{"pclass": "1st", "sex": "female", "age": 70, "sibsp": 4, "parch": 3}] * (MINIMUM_ROWS + 20)
    answer = httpx.post(f"{page.url}/v1/models/titanic/versions/v1/predict", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    found = api_drift(page, tag)
    assert found["window"]["rows"] == before + len(rows)
    by_id(browser, "drift-refresh").click()
    expected = str(found["window"]["rows"])
    wait_for(
        browser,  # read in one step: the refresh replaces the element
        lambda d: d.execute_script("return document.getElementById('drift-rows').dataset.rows") == expected,
        f"the page never showed {expected} rows",
    )
    visible(browser, "#drift-table tbody tr")
    assert not by_id(browser, "drift-message").is_displayed()
    assert found["window"]["since"] in by_id(browser, "drift-window").text
    # Each feature's PSI as the API has it, highlighted above 0.2 (and 0.1 to 0.2).
    names = [tr.get_attribute("data-feature") for tr in browser.find_elements("css selector", "#drift-table tbody tr")]
    assert names == registry.stored_schema(tag).names
    highlighted = 0
    for tr in browser.find_elements("css selector", "#drift-table tbody tr"):
        psi = found["psi"]["features"][tr.get_attribute("data-feature")]
        cell = tr.find_element("css selector", "td[data-psi]")
        assert abs(float(cell.get_attribute("data-psi")) - psi) <= 1e-12
        classes = (tr.get_attribute("class") or "").split()
        wanted = "psi-significant" if psi > 0.2 else "psi-moderate" if psi >= 0.1 else None
        assert classes == ([wanted] if wanted else []), (tr.text, psi)
        highlighted += wanted == "psi-significant"
    assert highlighted > 0  # a hundred identical rows drift
    # The bins of a chosen feature, training share against live share, as the API counts them.
    age = next(f for f in found["features"] if f["name"] == "age")
    select(browser, "drift-feature", str(names.index("age")))
    wait_for(browser, lambda d: d.find_element("id", "drift-chart").get_attribute("data-feature") == "age", "no chart")
    bins = browser.find_elements("css selector", "#drift-chart li")
    assert [b.get_attribute("data-bin") for b in bins] == [b["bin"] for b in age["bins"]]
    for shown, bin_ in zip(bins, age["bins"], strict=True):
        assert float(shown.get_attribute("data-expected")) == bin_["expected"]
        assert int(shown.get_attribute("data-count")) == bin_["count"]
    assert sum(b["count"] for b in age["bins"]) == found["window"]["rows"]
    screenshot(browser, "#model-panel", "web-page-drift.png")


def _shadow_compared(page: RunningServer) -> float:
    """Rows of breast_cancer:v1 its shadow compared (agree or disagree), by /metrics."""
    metrics = httpx.get(f"{page.url}/metrics", timeout=10).text
    compared = re.findall(r"model_server_shadow_comparisons_total\{([^}]*)\} (\S+)", metrics)
    return sum(
        float(value)
        for labels, value in compared
        if 'tag="breast_cancer:v1"' in labels and re.search(r'outcome="(agree|disagree)"', labels)
    )


def test_two_tags_side_by_side_next_to_their_control_with_the_shadow_agreement(
    browser: Any, page: RunningServer
) -> None:
    schema = registry.stored_schema("breast_cancer:v1")
    rows = [[(f.min + f.max) / 2 for f in schema.features]] * 3
    before = settled(lambda: _shadow_compared(page))  # what earlier tests sent may still be compared
    for _ in range(4):
        answer = httpx.post(f"{page.url}/v1/models/breast_cancer/predict", json={"instances": rows}, timeout=30)
        assert answer.status_code == 200
    # The shadow compares after the callers have their answers: the page is opened once it has.
    deadline = time.monotonic() + 30
    while (counted := _shadow_compared(page)) < before + 12:
        assert time.monotonic() < deadline, f"{counted - before} of this test's 12 rows compared"
        time.sleep(0.1)
    open_model(browser, page, "breast_cancer")
    assert len(browser.find_elements("css selector", "#features [data-feature]")) == len(schema.features)
    tab(browser, "compare")
    select(browser, "compare-tag", "breast_cancer:v2")
    text = visible(browser, "#shadow-agreement").text
    control = by_id(browser, "compare-tag").rect
    table = by_id(browser, "compare-table").rect
    assert 0 < table["y"] - (control["y"] + control["height"]) < 150  # drawn right under its control
    assert _shadow_compared(page) == counted  # nothing else was sent meanwhile
    assert text.startswith("Shadow agreement of breast_cancer:v2 with breast_cancer:v1:"), text
    assert text.endswith(f"of {int(counted)} rows on this server (all its workers) since it started."), text
    v1 = registry.load("breast_cancer:v1").metadata["metrics"]
    row = browser.find_element("css selector", '#compare-table tr[data-metric="holdout_accuracy"]')
    assert row.text.split()[1] == f"{v1['holdout_accuracy']:.4g}"


def test_the_card_shows_live_quality_and_the_comparison_the_verdict(browser: Any, page: RunningServer) -> None:
    from sklearn.datasets import load_iris

    iris = load_iris()
    items = []
    for i, (row, label) in enumerate(zip(iris.data.tolist(), iris.target.tolist(), strict=True)):
        version = "v1" if i % 2 else "v2"
        url = f"{page.url}/v1/models/iris/versions/{version}/predict"
        answer = httpx.post(url, json={"instances": [row]}, timeout=30).json()
        items.append({"id": answer["ids"][0], "truth": str(iris.target_names[label])})
    fed = httpx.post(f"{page.url}/v1/models/iris/feedback", json={"feedback": items}, timeout=30).json()
    assert fed["counts"]["accepted"] == len(items)
    report = httpx.get(f"{page.url}/v1/models/iris/outcomes", timeout=30).json()
    live = next(t for t in report["tags"] if t["tag"] == "iris:v1")["live"]
    open_model(browser, page, "iris")
    tab(browser, "card")
    select(browser, "card-tag", "iris:v1")
    cell = visible(browser, '#live-table tr[data-metric="accuracy"] td[data-value]')
    assert float(cell.get_attribute("data-value")) == live["accuracy"]["value"]
    assert f"{live['outcomes']} outcomes in the window" in by_id(browser, "live-summary").text
    heldout = registry.load("iris:v1").metadata["metrics"]["holdout_accuracy"]
    row = browser.find_element("css selector", '#live-table tr[data-metric="accuracy"]').text
    assert row.split()[-1] == f"{heldout:.4g}"
    tab(browser, "compare")
    select(browser, "compare-left", "iris:v1")
    select(browser, "compare-tag", "iris:v2")
    verdict = next(v for v in report["verdicts"] if v["metric"] == "accuracy")
    shown = visible(browser, '#verdict-table tr[data-metric="accuracy"]').text
    assert verdict["verdict"] in shown and f"{verdict['units'][0]} / {verdict['units'][1]}" in shown
    summary = by_id(browser, "verdict-summary").text
    assert f"{verdict['rows'][0]} and {verdict['rows'][1]} outcomes" in summary
    screenshot(browser, "#comparison", "web-page-verdict.png")


# ---- API keys --------------------------------------------------------------------------


def test_the_key_field_shows_on_a_401_and_tells_a_missing_key_from_a_wrong_one(
    browser: Any, keyed_server: RunningServer
) -> None:
    browser.get(f"{keyed_server.url}/ui")  # the page itself needs no key
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{keyed_server.url}/ui")
    error = visible(browser, "#models-error").text
    assert error == "A key is needed (401): this server has API keys on. Type yours above and press Use this key."
    assert visible(browser, "#key-form").is_displayed()
    assert by_id(browser, "api-key-hint").text.startswith("A key is needed")
    by_id(browser, "api-key").send_keys("not-the-key")
    by_id(browser, "api-key-save").click()
    wait_for(
        browser,
        lambda d: "not-the-key" == d.execute_script("return sessionStorage.getItem('model-server-api-key')"),
        "key not kept",
    )
    wait_for(browser, lambda d: "not accepted" in d.find_element("id", "models-error").text, "no refusal")
    assert by_id(browser, "models-error").text.startswith("This key is not accepted (401).")
    assert by_id(browser, "api-key-hint").text.startswith("This key is not accepted")
    key = by_id(browser, "api-key")
    key.clear()
    key.send_keys(KEY)
    by_id(browser, "api-key-save").click()
    visible(browser, '#model-panel[data-ready="iris"] #features [data-feature]')
    # Drift counting is off on this server: the drift tab shows the server's 409 and its reason.
    tab(browser, "drift")
    drift = visible(browser, "#drift-message").text
    assert drift.startswith("409:") and "drift counting is off" in drift, drift
    tab(browser, "try")
    by_id(browser, "example-button").click()
    select(browser, "version", "v1")
    predict(browser)
    assert shown_answer(browser)["tag"] == "iris:v1"
    assert not by_id(browser, "models-error").is_displayed()
    # Show request names the key without writing it out.
    by_id(browser, "show-request").find_element("tag name", "summary").click()
    assert '-H "Authorization: Bearer $API_KEY"' in by_id(browser, "request-curl").text
    assert KEY not in by_id(browser, "request-curl").text
    browser.execute_script("sessionStorage.clear()")


# ---- phone width and accessibility ---------------------------------------------------------


def fill_every_tab(driver: Any, server: RunningServer, tmp_path: Path) -> list[str]:
    """breast_cancer with something in every tab: an explained answer, a scored file, its
    card, drift (over enough rows for a reading) and a comparison; the names of the tabs."""
    schema = registry.stored_schema("breast_cancer:v1")
    rows = [[(f.min + f.max) / 2 for f in schema.features]] * MINIMUM_ROWS
    answer = httpx.post(f"{server.url}/v1/models/breast_cancer/versions/v1/predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    open_model(driver, server, "breast_cancer")
    by_id(driver, "example-button").click()
    by_id(driver, "explain").click()
    predict(driver)
    visible(driver, "#explanation")
    by_id(driver, "show-request").find_element("tag name", "summary").click()
    path = tmp_path / "cells.csv"
    path.write_text(",".join(schema.names) + "\n" + ",".join(str((f.min + f.max) / 2) for f in schema.features) + "\n")
    score_file(driver, path)
    tab(driver, "card")
    visible(driver, "#model-card h3")
    tab(driver, "drift")
    visible(driver, '#drift[data-tag="breast_cancer:v1"] #drift-chart li')
    tab(driver, "compare")
    select(driver, "compare-tag", "breast_cancer:v2")
    visible(driver, "#shadow-agreement")
    return ["try", "csv", "card", "drift", "compare"]


def test_the_page_fits_a_phone_and_scrolls_to_the_answer(browser: Any, page: RunningServer) -> None:
    phone(browser)
    try:
        open_model(browser, page, "breast_cancer")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide at a 375 px screen"
        by_id(browser, "example-button").click()
        browser.execute_script("scrollTo(0, 0)")
        predict(browser)
        visible(browser, "#prediction")
        top = browser.execute_script("return document.getElementById('answer-title').getBoundingClientRect().top")
        assert 0 <= top < 800, f"the answer starts at {top} px, off a 800 px screen"
        assert browser.switch_to.active_element.get_attribute("id") == "answer-title"
        screenshot(browser, None, "web-page-phone.png")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_axe_finds_no_violations_on_any_tab(browser: Any, page: RunningServer, tmp_path: Path, size: str) -> None:
    if size == "phone":
        phone(browser)
    try:
        found = {}
        for name in fill_every_tab(browser, page, tmp_path):
            tab(browser, name)
            found[name] = axe_violations(browser)
        assert found == dict.fromkeys(found, []), found
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_axe_finds_no_violations_when_a_key_is_asked_for(browser: Any, keyed_server: RunningServer) -> None:
    browser.get(f"{keyed_server.url}/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{keyed_server.url}/ui")
    visible(browser, "#key-form")
    assert axe_violations(browser) == []
