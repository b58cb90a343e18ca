"""The web page /ui in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against a real `bentoml serve`: forms built from the training schema,
answers and explanations checked against the JSON API's, CSV scoring, model cards with
drift, API keys, phone width.

The screenshots go to test-output/images/ (ignored by git); `make docs-images` writes
them to docs/images/ instead.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from model_server.local_server import RunningServer, start_server
from model_server.models import registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# docs/images/ only when asked for (make docs-images): a test run never rewrites tracked files.
IMAGES = Path(os.environ.get("MODEL_SERVER_SCREENSHOTS") or ROOT / "test-output" / "images")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60
KEY = "web-page-key"


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
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


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


def open_model(driver: Any, server: RunningServer, name: str) -> None:
    """Load /ui and open one model from the list of served models."""
    driver.get(f"{server.url}/ui")
    visible(driver, f'#models-table button[data-model="{name}"]').click()
    wait_for(driver, lambda d: d.find_element("id", "model-title").text.startswith(f"{name} "), f"{name} not opened")
    visible(driver, "#features [data-feature]")
    # The form is complete once every tag's card has said which features may stay empty.
    visible(driver, "#model-card h4")


def fill(driver: Any, values: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import Select

    for name, value in values.items():
        field = driver.find_element("css selector", f'#features [data-feature="{name}"]')
        if field.tag_name == "select":
            Select(field).select_by_value(str(value))
        else:
            field.clear()
            if value is not None:
                field.send_keys(str(value))


def shown_answer(driver: Any) -> dict[str, Any]:
    """What the page shows after a prediction: class or value, probabilities, tag."""
    visible(driver, "#prediction")
    bars = driver.find_elements("css selector", "#probabilities li")
    return {
        "prediction": driver.find_element("id", "predicted").get_attribute("data-value"),
        "probabilities": {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars},
        "tag": driver.find_element("id", "answer-tag").text,
        "latency": driver.find_element("id", "answer-latency").text,
    }


def api_answer(server: RunningServer, name: str, record: dict[str, Any], version: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.post(
        f"{server.url}/v1/models/{name}/versions/{version}/predict",
        json={"instances": [record]},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def api_explanation(server: RunningServer, name: str, record: dict[str, Any], version: str) -> Any:
    answer = httpx.post(
        f"{server.url}/v1/models/{name}/versions/{version}/predict",
        json={"instances": [record], "explain": True},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown_explanation(driver: Any) -> dict[str, Any]:
    """What the page shows of an explanation: contributions in the order shown, base value, output."""
    visible(driver, "#explanation")
    items = driver.find_elements("css selector", "#contributions li[data-feature]")
    return {
        "contributions": {i.get_attribute("data-feature"): float(i.get_attribute("data-contribution")) for i in items},
        "texts": [i.find_element("css selector", ".value").text for i in items],
        "base": float(driver.find_element("id", "explain-base").get_attribute("data-value")),
        "output": float(driver.find_element("id", "explain-output").get_attribute("data-value")),
        "summary": driver.find_element("id", "explanation-summary").text,
    }


def largest(contributions: dict[str, float], count: int = 5) -> list[str]:
    return sorted(contributions, key=lambda f: -abs(contributions[f]))[:count]


def api_drift(server: RunningServer, tag: str) -> dict[str, Any]:
    name, version = tag.split(":")
    answer = httpx.get(f"{server.url}/v1/models/{name}/versions/{version}/drift", timeout=30)
    assert answer.status_code == 200, answer.text
    [found] = answer.json()["tags"]
    return found


def select_version(driver: Any, version: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "version")).select_by_value(version)


def screenshot(driver: Any, css: str, name: str) -> None:
    """A PNG of one element, whole even where it runs past the window."""
    import base64

    box = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height, scale: 1};",
        css,
    )
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"clip": box, "captureBeyondViewport": True})
    IMAGES.mkdir(parents=True, exist_ok=True)
    (IMAGES / name).write_bytes(base64.b64decode(shot["data"]))


# ---- the tests --------------------------------------------------------------------


def test_the_page_is_served_open_with_its_own_assets_only(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/ui", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from elsewhere
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        asset = httpx.get(f"{server.url}{path}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), path
        assert "http://" not in asset.text and "https://" not in asset.text, path
    root = httpx.get(f"{server.url}/docs.json", timeout=10).json()
    assert "[/ui](/ui)" in root["paths"]["/predict"]["post"]["description"]  # linked from BentoML's page


def test_numeric_form_answers_what_the_api_answers(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "iris")
    record = {"sepal length (cm)": 6.1, "sepal width (cm)": 2.8, "petal length (cm)": 4.7, "petal width (cm)": 1.2}
    fill(browser, record)
    select_version(browser, "v1")
    browser.find_element("id", "predict-button").click()
    shown = shown_answer(browser)
    expected = api_answer(server, "iris", record, "v1")
    assert shown["tag"] == expected["tag"] == "iris:v1"
    assert shown["prediction"] == expected["predictions"][0] == "versicolor"
    assert list(shown["probabilities"]) == expected["classes"]
    assert list(shown["probabilities"].values()) == pytest.approx(expected["probabilities"][0], abs=1e-12)
    assert re.fullmatch(r"\d+\.\d ms", shown["latency"])
    # Every input has a label, and each numeric input says its training range.
    for field in browser.find_elements("css selector", "#features [data-feature]"):
        label = browser.find_element("css selector", f'label[for="{field.get_attribute("id")}"]')
        assert label.text == field.get_attribute("data-feature")
        hint = browser.find_element("id", field.get_attribute("aria-describedby")).text
        assert hint.startswith("Training range") and "May be left empty" in hint
    screenshot(browser, "#model-panel > section:first-of-type", "web-page-predict.png")


def test_a_caller_key_keeps_the_page_on_the_tag_the_api_gives_that_key(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "iris")
    browser.find_element("id", "example-button").click()
    browser.find_element("id", "caller-key").send_keys("analyst-7")
    browser.find_element("id", "predict-button").click()
    tag = shown_answer(browser)["tag"]
    record = {
        f.get_attribute("data-feature"): float(f.get_attribute("value"))
        for f in browser.find_elements("css selector", "#features [data-feature]")
    }
    answer = httpx.post(
        f"{server.url}/v1/models/iris/predict",
        json={"instances": [record]},
        headers={"X-Request-Key": "analyst-7"},
        timeout=30,
    )
    assert answer.json()["tag"] == tag


def test_categorical_form_offers_the_training_categories_and_answers_what_the_api_answers(
    browser: Any, server: RunningServer
) -> None:
    from selenium.webdriver.common.keys import Keys

    open_model(browser, server, "titanic")
    pclass = browser.find_element("css selector", '#features [data-feature="pclass"]')
    assert pclass.tag_name == "select"
    options = [o.get_attribute("value") for o in pclass.find_elements("tag name", "option")]
    assert options == ["", "1st", "2nd", "3rd"]  # "" is the missing value the imputer fills
    record = {"pclass": "3rd", "sex": "male", "age": None, "sibsp": 1, "parch": 0}
    fill(browser, record)
    select_version(browser, "v1")
    # Keyboard only: Enter in a field submits the form.
    browser.find_element("css selector", '#features [data-feature="parch"]').send_keys(Keys.ENTER)
    shown = shown_answer(browser)
    expected = api_answer(server, "titanic", record, "v1")
    assert shown["tag"] == expected["tag"] == "titanic:v1"
    assert shown["prediction"] == expected["predictions"][0]
    assert list(shown["probabilities"]) == expected["classes"] == ["died", "survived"]
    assert list(shown["probabilities"].values()) == pytest.approx(expected["probabilities"][0], abs=1e-12)


def test_explain_on_the_titanic_form_shows_the_apis_contributions_and_base_value(
    browser: Any, server: RunningServer
) -> None:
    from selenium.webdriver.common.keys import Keys

    open_model(browser, server, "titanic")
    record = {"pclass": "3rd", "sex": "male", "age": 30, "sibsp": 0, "parch": 0}
    fill(browser, record)
    select_version(browser, "v1")
    browser.find_element("id", "explain").send_keys(Keys.SPACE)  # a checkbox, ticked from the keyboard
    assert browser.find_element("id", "explain").is_selected()
    browser.find_element("id", "predict-button").click()
    shown = shown_explanation(browser)
    expected = api_explanation(server, "titanic", record, "v1")
    explanation = expected["explanation"]
    contributions = explanation["contributions"][0]
    assert shown_answer(browser)["prediction"] == expected["predictions"][0]
    # The five largest by absolute value, largest first, each equal to the API's, with its sign.
    assert list(shown["contributions"]) == largest(contributions)
    for feature, value in shown["contributions"].items():
        assert abs(value - contributions[feature]) <= 1e-9, feature
    for text, feature in zip(shown["texts"], shown["contributions"], strict=True):
        assert text[0] == ("+" if contributions[feature] > 0 else "-"), (feature, text)
    assert abs(shown["base"] - explanation["base_value"]) <= 1e-9
    assert abs(shown["output"] - explanation["outputs"][0]) <= 1e-9
    assert explanation["space"] == "log_odds"
    assert f'log-odds of "{explanation["class"]}"' in shown["summary"], shown["summary"]
    assert "(log-odds)" in browser.find_element("id", "explain-base").text
    # Unticked, the next answer carries no explanation and the page shows none.
    browser.find_element("id", "explain").click()
    browser.find_element("id", "predict-button").click()
    wait_for(browser, lambda d: not d.find_element("id", "explanation").is_displayed(), "the explanation stayed")


def test_a_multi_class_explanation_shows_the_predicted_class(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "iris")
    record = {"sepal length (cm)": 6.1, "sepal width (cm)": 2.8, "petal length (cm)": 4.7, "petal width (cm)": 1.2}
    fill(browser, record)
    select_version(browser, "v2")
    browser.find_element("id", "explain").click()
    browser.find_element("id", "predict-button").click()
    shown = shown_explanation(browser)
    expected = api_explanation(server, "iris", record, "v2")
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


def test_a_value_the_schema_refuses_shows_the_servers_message(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "iris")
    browser.find_element("id", "example-button").click()
    fill(browser, {"petal width (cm)": "1e300"})
    browser.find_element("id", "predict-button").click()
    error = visible(browser, "#predict-error").text
    assert error.startswith("400: invalid input: instances[0]['petal width (cm)']"), error


def test_a_csv_file_is_scored_into_a_table_and_a_download(browser: Any, server: RunningServer, tmp_path: Path) -> None:
    rows = [
        ("5.1", "3.5", "1.4", "0.2", "setosa"),
        ("6.1", "2.8", "4.7", "1.2", "versicolor"),
        ("6.3", "3.3", "6.0", "2.5", "virginica"),
        ("", "3.0", "5.1", "1.8", "virginica"),  # missing: the model's imputer fills it
    ] * 5
    header = '"sepal length (cm)",sepal width (cm),petal length (cm),petal width (cm),"species, as labelled"'
    path = tmp_path / "flowers.csv"
    path.write_text(header + "\r\n" + "\r\n".join(",".join(r) for r in rows) + "\r\n")
    open_model(browser, server, "iris")
    select_version(browser, "v2")
    browser.find_element("id", "csv-file").send_keys(str(path))
    browser.find_element("id", "csv-score").click()
    summary = visible(browser, "#csv-summary").text
    assert re.fullmatch(r"20 rows scored by iris:v2 in \d+ ms\.", summary), summary
    table_rows = browser.find_elements("css selector", "#csv-table tbody tr")
    assert len(table_rows) == 20
    columns = [th.text for th in browser.find_elements("css selector", "#csv-table thead th")]
    assert columns[-4:] == ["prediction", "probability setosa", "probability versicolor", "probability virginica"]
    records = [{n: (float(v) if v else None) for n, v in zip(columns[:4], row[:4], strict=True)} for row in rows[:4]]
    expected = httpx.post(
        f"{server.url}/v1/models/iris/versions/v2/predict", json={"instances": records}, timeout=30
    ).json()
    cells = [td.text for td in table_rows[3].find_elements("tag name", "td")]
    assert cells[4] == "virginica" and cells[5] == expected["predictions"][3]
    assert float(cells[8]) == pytest.approx(expected["probabilities"][3][2], rel=1e-3)
    download = browser.find_element("id", "csv-download")
    assert download.get_attribute("href").startswith("blob:")
    assert download.get_attribute("download") == "flowers-predictions.csv"
    text = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('csv-download').href)"
        ".then(r => r.text()).then(done, e => done(String(e)))"
    )
    lines = text.strip().split("\r\n")
    assert len(lines) == 21 and lines[0].startswith("sepal length (cm),") and '"species, as labelled"' in lines[0]
    assert lines[4].split(",")[5] == expected["predictions"][3]


def test_the_csv_download_writes_formulas_as_text_and_numbers_as_numbers(
    browser: Any, server: RunningServer, tmp_path: Path
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
    open_model(browser, server, "iris")
    browser.find_element("id", "csv-file").send_keys(str(path))
    browser.find_element("id", "csv-score").click()
    visible(browser, "#csv-summary")
    text = browser.execute_async_script(
        "const done = arguments[0]; fetch(document.getElementById('csv-download').href)"
        ".then(r => r.text()).then(done, e => done(String(e)))"
    )
    lines = text.split("\r\n")
    assert lines[0].startswith(
        'sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),"\'=HYPERLINK(""http://x"")",note,'
    )
    assert lines[1].startswith('-1.5,3.5,1.4,0.2,"\'+SUM(A1:A2)","\'@cmd",')
    assert lines[2].startswith('5.1,3.5,1.4,0.2,"\'\tTAB","\'-2+3",')
    assert lines[3].startswith('6.3,3.3,6.0,2.5,"\'\rCR",plain,')
    # The outputs: a class name, then probabilities as plain numbers.
    assert all(not cell.startswith(("=", "+", "@", "'")) for cell in lines[1].split(",")[6:])


def test_a_csv_file_over_the_row_limit_is_refused_with_the_limit(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    limit = httpx.get(f"{server.url}/v1/limits", timeout=10).json()["max_rows_per_request"]
    path = tmp_path / "many.csv"
    path.write_text(
        "sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n" + "5,3,1,0.2\n" * (limit + 1)
    )
    open_model(browser, server, "iris")
    browser.find_element("id", "csv-file").send_keys(str(path))
    browser.find_element("id", "csv-score").click()
    error = visible(browser, "#csv-error").text
    assert f"the file has {limit + 1} rows; the server takes at most {limit} rows per request" in error


def test_the_model_card_shows_what_training_stored(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "titanic")
    stored = registry.load("titanic:v1").metadata
    card = browser.find_element("id", "model-card")
    shown = browser.find_element("css selector", '#card-metrics tr[data-metric="holdout_accuracy"] td')
    assert float(shown.get_attribute("data-value")) == stored["metrics"]["holdout_accuracy"]
    text = card.text
    for fact in (stored["data_sha256"], stored["command"], str(stored["training_rows"]), "1st, 2nd, 3rd"):
        assert fact in text
    assert re.search(r"Registered\n\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text), text
    screenshot(browser, "#model-panel > section:last-of-type", "web-page-card.png")


def test_the_card_shows_drift_per_feature_and_the_rows_the_api_counts(browser: Any, server: RunningServer) -> None:
    open_model(browser, server, "titanic")
    visible(browser, '#drift[data-tag="titanic:v1"] #drift-table tbody tr')
    names = [tr.get_attribute("data-feature") for tr in browser.find_elements("css selector", "#drift-table tbody tr")]
    assert names == registry.stored_schema("titanic:v1").names
    # Rows far from the training data, through the API: every feature lands in one bin.
    before = api_drift(server, "titanic:v1")["window"]["rows"]
    rows = [{"pclass": "1st", "sex": "female", "age": 70, "sibsp": 4, "parch": 3}] * 12
    answer = httpx.post(f"{server.url}/v1/models/titanic/versions/v1/predict", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    found = api_drift(server, "titanic:v1")
    assert found["window"]["rows"] == before + len(rows)
    browser.find_element("id", "drift-refresh").click()
    expected = str(found["window"]["rows"])
    wait_for(
        browser,  # read in one step: the refresh replaces the element
        lambda d: d.execute_script("return document.getElementById('drift-rows').dataset.rows") == expected,
        f"the card never showed {expected} rows",
    )
    assert browser.find_element("id", "drift-rows").text == expected
    assert found["window"]["since"] in browser.find_element("id", "drift-window").text
    # Each feature's PSI as the API has it, highlighted above 0.2 (and 0.1 to 0.2).
    highlighted = 0
    for tr in browser.find_elements("css selector", "#drift-table tbody tr"):
        psi = found["psi"]["features"][tr.get_attribute("data-feature")]
        cell = tr.find_element("css selector", "td[data-psi]")
        assert abs(float(cell.get_attribute("data-psi")) - psi) <= 1e-12
        classes = (tr.get_attribute("class") or "").split()
        wanted = "psi-significant" if psi > 0.2 else "psi-moderate" if psi >= 0.1 else None
        assert classes == ([wanted] if wanted else []), (tr.text, psi)
        highlighted += wanted == "psi-significant"
    assert highlighted > 0  # twelve identical rows drift
    assert found["psi"]["features"] and max(found["psi"]["features"].values()) > 0.2


def test_two_tags_side_by_side_with_the_shadow_agreement_from_the_metrics(browser: Any, server: RunningServer) -> None:
    from selenium.webdriver.support.ui import Select

    schema = registry.stored_schema("breast_cancer:v1")
    rows = [[(f.min + f.max) / 2 for f in schema.features]] * 3
    for _ in range(4):
        answer = httpx.post(f"{server.url}/v1/models/breast_cancer/predict", json={"instances": rows}, timeout=30)
        assert answer.status_code == 200
    open_model(browser, server, "breast_cancer")
    assert len(browser.find_elements("css selector", "#features [data-feature]")) == len(schema.features)
    Select(browser.find_element("id", "compare-tag")).select_by_value("breast_cancer:v2")
    text = visible(browser, "#shadow-agreement").text
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    compared = re.findall(r"model_server_shadow_comparisons_total\{([^}]*)\} (\S+)", metrics)
    counted = sum(
        float(value)
        for labels, value in compared
        if 'tag="breast_cancer:v1"' in labels and re.search(r'outcome="(agree|disagree)"', labels)
    )
    assert counted >= 12  # this test's rows, at least, were compared
    assert text.startswith("Shadow agreement of breast_cancer:v2 with breast_cancer:v1:"), text
    assert text.endswith(f"of {int(counted)} rows on this server (all its workers) since it started."), text
    v1 = registry.load("breast_cancer:v1").metadata["metrics"]
    row = browser.find_element("css selector", '#compare-table tr[data-metric="holdout_accuracy"]')
    assert row.text.split()[1] == f"{v1['holdout_accuracy']:.4g}"


def test_the_card_shows_live_quality_and_the_comparison_the_verdict(browser: Any, server: RunningServer) -> None:
    from selenium.webdriver.support.ui import Select
    from sklearn.datasets import load_iris

    iris = load_iris()
    items = []
    for i, (row, label) in enumerate(zip(iris.data.tolist(), iris.target.tolist(), strict=True)):
        version = "v1" if i % 2 else "v2"
        url = f"{server.url}/v1/models/iris/versions/{version}/predict"
        answer = httpx.post(url, json={"instances": [row]}, timeout=30).json()
        items.append({"id": answer["ids"][0], "truth": str(iris.target_names[label])})
    fed = httpx.post(f"{server.url}/v1/models/iris/feedback", json={"feedback": items}, timeout=30).json()
    assert fed["counts"]["accepted"] == len(items)
    report = httpx.get(f"{server.url}/v1/models/iris/outcomes", timeout=30).json()
    live = next(t for t in report["tags"] if t["tag"] == "iris:v1")["live"]
    open_model(browser, server, "iris")
    Select(browser.find_element("id", "card-tag")).select_by_value("iris:v1")
    cell = visible(browser, '#live-table tr[data-metric="accuracy"] td[data-value]')
    assert float(cell.get_attribute("data-value")) == live["accuracy"]["value"]
    assert f"{live['outcomes']} outcomes in the window" in browser.find_element("id", "live-summary").text
    heldout = registry.load("iris:v1").metadata["metrics"]["holdout_accuracy"]
    row = browser.find_element("css selector", '#live-table tr[data-metric="accuracy"]').text
    assert row.split()[-1] == f"{heldout:.4g}"
    Select(browser.find_element("id", "compare-tag")).select_by_value("iris:v2")
    verdict = next(v for v in report["verdicts"] if v["metric"] == "accuracy")
    shown = visible(browser, '#verdict-table tr[data-metric="accuracy"]').text
    assert verdict["verdict"] in shown and f"{verdict['units'][0]} / {verdict['units'][1]}" in shown
    summary = browser.find_element("id", "verdict-summary").text
    assert f"{verdict['rows'][0]} and {verdict['rows'][1]} outcomes" in summary
    screenshot(browser, "#comparison", "web-page-verdict.png")


def test_a_wrong_api_key_shows_the_401_and_the_right_one_loads_the_models(
    browser: Any, keyed_server: RunningServer
) -> None:
    browser.get(f"{keyed_server.url}/ui")  # the page itself needs no key
    assert visible(browser, "#models-error").text.startswith("401:")
    browser.find_element("id", "api-key").send_keys("not-the-key")
    browser.find_element("id", "api-key-save").click()
    wait_for(
        browser,
        lambda d: "not-the-key" == d.execute_script("return sessionStorage.getItem('model-server-api-key')"),
        "key not kept",
    )
    error = visible(browser, "#models-error").text
    assert error.startswith("401:") and "API key" in error, error
    key = browser.find_element("id", "api-key")
    key.clear()
    key.send_keys(KEY)
    browser.find_element("id", "api-key-save").click()
    visible(browser, '#models-table button[data-model="iris"]')
    visible(browser, "#model-card h4")
    # Drift counting is off on this server: the card shows the server's 409 and its reason.
    drift = visible(browser, "#drift-message").text
    assert drift.startswith("409:") and "drift counting is off" in drift, drift
    browser.find_element("id", "example-button").click()
    select_version(browser, "v1")
    browser.find_element("id", "predict-button").click()
    assert shown_answer(browser)["tag"] == "iris:v1"
    assert not browser.find_element("id", "models-error").is_displayed()


def test_the_page_fits_a_phone_screen(browser: Any, server: RunningServer) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        open_model(browser, server, "breast_cancer")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 375, f"the page is {width} px wide at a 375 px screen"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
