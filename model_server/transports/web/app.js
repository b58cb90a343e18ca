// The web page at /ui: a client of the server's JSON API (/v1), nothing more.
// It lists the served models and, per model, has five tabs: a form built from the
// training schema (checked before it is sent, with real training rows as examples and
// the answer beside it), CSV scoring in chunks, the model card, drift, and two tags side
// by side. An API key, asked for only when the server answers 401, is kept in this tab's
// sessionStorage and sent as "Authorization: Bearer".
"use strict";

const KEY_STORAGE = "model-server-api-key";
const TOP_CONTRIBUTIONS = 5; // the explanation shows this many features, largest first
const PREVIEW_ROWS = 20; // rows of a scored file shown in the page; the download has them all
const TABS = ["try", "csv", "card", "drift", "compare"];
// What the page holds: the served models and their descriptions, the server's limits, the
// open model, the cards read so far, the examples of the open model, the file being scored
// (its AbortController) and the bins of the drift shown.
const state = { models: [], details: {}, limits: null, model: null, cards: {}, examples: [], scoring: null, driftBins: [] };

// ---- Calls to the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

function apiUrl(path) {
  // Relative to the page (/ui), so a path prefix added by a proxy is kept.
  return new URL(path, document.baseURI).toString();
}

async function api(path, { body = null, callerKey = "", accept = "json", signal = null } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["Authorization"] = `Bearer ${key}`;
  if (callerKey) headers["X-Request-Key"] = callerKey;
  if (body !== null) headers["Content-Type"] = "application/json";
  const options = { method: body === null ? "GET" : "POST", headers, cache: "no-store" };
  if (signal) options.signal = signal;
  if (body !== null) options.body = typeof body === "string" ? body : JSON.stringify(body);
  const response = await fetch(apiUrl(path), options);
  const text = await response.text();
  if (response.status === 401) {
    askForKey(Boolean(key));
    throw new ApiError(401, key ? "this key is not accepted" : "a key is needed");
  }
  if (!response.ok) throw new ApiError(response.status, errorMessage(response, text));
  return { data: accept === "json" ? JSON.parse(text) : text, tag: response.headers.get("x-model-tag") };
}

function errorMessage(response, text) {
  let message = response.statusText || "error";
  try {
    const parsed = JSON.parse(text);
    if (parsed && parsed.error) message = parsed.error;
  } catch (_) {
    if (text) message = text.slice(0, 300);
  }
  return message;
}

// The key field shows only once the server has asked for a key (or one is kept).
function askForKey(sent) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  document.getElementById("api-key-hint").textContent = sent
    ? "This key is not accepted: check it and try again. It stays in this tab only and is sent as Authorization: Bearer."
    : "A key is needed: this server has API keys on. It stays in this tab only and is sent as Authorization: Bearer.";
}

function showError(id, error) {
  const element = document.getElementById(id);
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  if (error instanceof ApiError && error.status === 401) {
    element.textContent =
      error.message === "401: this key is not accepted"
        ? "This key is not accepted (401). Type the right API key above and press Use this key."
        : "A key is needed (401): this server has API keys on. Type yours above and press Use this key.";
  } else element.textContent = error instanceof ApiError ? error.message : `Error: ${error.message || error}`;
  element.hidden = false;
}

// ---- Small helpers ---------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function formatNumber(value) {
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  return size !== 0 && (size < 0.001 || size >= 1e6) ? value.toExponential(3) : String(Number(value.toPrecision(4)));
}

function formatCount(count) {
  return count.toLocaleString("en-US");
}

function percent(p) {
  return `${(p * 100).toFixed(1)}\u00a0%`;
}

function versionOf(tag) {
  return tag.slice(tag.indexOf(":") + 1);
}

function headlineMetric(metrics) {
  const names = Object.keys(metrics || {}).filter((n) => n.startsWith("holdout_"));
  return names.length ? [names[0].slice("holdout_".length), metrics[names[0]]] : null;
}

function featureOf(name) {
  return state.model.schema.features.find((f) => f.name === name);
}

// ---- Numbers as people type them --------------------------------------------------

const PLAIN_NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;
const COMMA_DECIMAL = /^([-+]?)(\d+),(\d+)$/;

// What a typed number means: {value} (null when empty), {value, shown} when it is sent in
// another form than typed, or {error}. A comma is a decimal point only where it cannot be
// a thousands separator: "1,5" is 1.5, but "1,500" could be 1.5 or 1500 and is refused.
function parseNumber(typed) {
  const text = typed.trim();
  if (text === "") return { value: null };
  let number;
  const comma = COMMA_DECIMAL.exec(text);
  if (PLAIN_NUMBER.test(text)) number = Number(text);
  else if (comma) {
    const [, sign, whole, fraction] = comma;
    if (fraction.length === 3 && /^[1-9]\d{0,2}$/.test(whole))
      return { error: `"${text}" is ambiguous: write ${sign}${whole}.${fraction} or ${sign}${whole}${fraction}` };
    number = Number(`${sign}${whole}.${fraction}`);
  } else return { error: `"${text}" is not a number (digits, with a point or a comma for decimals, e.g. 1.5)` };
  if (!Number.isFinite(number)) return { error: `"${text}" is too large to be a number` };
  return String(number) === text ? { value: number } : { value: number, shown: String(number) };
}

// ---- The list of models -----------------------------------------------------------

async function loadModels() {
  showError("models-error", null);
  const body = document.querySelector("#models-table tbody");
  body.replaceChildren();
  try {
    const [{ data: list }, { data: limits }] = await Promise.all([api("v1/models"), api("v1/limits")]);
    state.limits = limits;
    state.models = list.models;
    const details = await Promise.all(list.models.map((m) => api(`v1/models/${encodeURIComponent(m.name)}`)));
    for (const { data } of details) state.details[data.name] = data;
  } catch (error) {
    showError("models-error", error);
    document.getElementById("model-panel").hidden = true;
    return;
  }
  for (const model of state.models) body.append(modelRow(state.details[model.name]));
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.details[wanted] ? wanted : state.models.length ? state.models[0].name : null;
  if (first) openModel(first);
}

function modelRow(model) {
  const open = element("button", { type: "button", className: "link", "data-model": model.name, text: model.name });
  open.addEventListener("click", () => {
    history.replaceState(null, "", `#${encodeURIComponent(model.name)}`);
    openModel(model.name);
    document.getElementById("model-panel").focus();
  });
  const tags = model.variants.map((v) => `${v.tag} ${formatNumber(v.weight)} %`).join(", ");
  const metrics = model.variants
    .map((v) => {
      const found = headlineMetric(v.metrics);
      return found ? `${v.version}: ${found[0]} ${formatNumber(found[1])}` : `${v.version}: none`;
    })
    .join("; ");
  return element(
    "tr",
    { "data-model": model.name },
    element("td", {}, open),
    element("td", { text: model.task }),
    element("td", { text: tags }),
    element("td", { text: metrics }),
    element("td", { text: model.shadow || "none" }),
  );
}

function servedTags(model) {
  const tags = model.variants.map((v) => v.tag);
  if (model.shadow && !tags.includes(model.shadow)) tags.push(model.shadow);
  return tags;
}

// ---- Tabs (the WAI-ARIA tabs pattern: arrow keys move between them) ----------------

function selectTab(name, focus = false) {
  for (const tab of TABS) {
    const button = document.getElementById(`tab-${tab}`);
    const chosen = tab === name;
    button.setAttribute("aria-selected", String(chosen));
    button.tabIndex = chosen ? 0 : -1;
    document.getElementById(`panel-${tab}`).hidden = !chosen;
    if (chosen && focus) button.focus();
  }
  if (name === "drift" && state.model) showDrift(document.getElementById("drift-tag").value);
}

function tabKeys(event) {
  const current = TABS.findIndex((t) => document.getElementById(`tab-${t}`).getAttribute("aria-selected") === "true");
  const moves = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 };
  if (!(event.key in moves)) return;
  event.preventDefault();
  selectTab(TABS[(moves[event.key] + TABS.length) % TABS.length], true);
}

// ---- One model ----------------------------------------------------------------------

async function openModel(name) {
  const model = state.details[name];
  state.model = model;
  for (const row of document.querySelectorAll("#models-table tbody tr")) {
    const chosen = row.dataset.model === name;
    row.classList.toggle("selected", chosen);
    const button = row.querySelector("button");
    if (chosen) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  const panel = document.getElementById("model-panel");
  document.getElementById("model-title").textContent = `${model.name} (${model.task})`;
  panel.hidden = false;
  delete panel.dataset.ready;
  for (const id of ["predict-error", "csv-error", "card-error", "compare-error"]) showError(id, null);
  cancelScoring();
  resetAnswer();
  document.getElementById("csv-result").hidden = true;
  document.getElementById("csv-progress-box").hidden = true;
  document.getElementById("features").replaceChildren();
  document.getElementById("model-card").replaceChildren();
  document.getElementById("comparison").hidden = true;
  const drift = document.getElementById("drift");
  delete drift.dataset.tag; // the tag whose drift it shows
  for (const id of ["drift-result", "drift-message", "drift-window"]) document.getElementById(id).hidden = true;

  const tags = servedTags(model);
  fillSelect(document.getElementById("version"), [["", "A/B split (by weight)"], ...tags.map((t) => [versionOf(t), t])]);
  for (const id of ["card-tag", "drift-tag", "compare-left"]) fillSelect(document.getElementById(id), tags.map((t) => [t, t]));
  fillSelect(document.getElementById("compare-tag"), [["", "nothing"], ...tags.map((t) => [t, t])]);
  document.getElementById("csv-hint").textContent =
    `Columns: ${model.schema.features.map((f) => f.name).join(", ")}. Other columns are ignored and kept in the ` +
    `download; an empty cell is a missing value. A file of more than ${formatCount(state.limits.max_rows_per_request)} ` +
    `rows is sent in parts of at most that many rows, one after the other.`;

  // Every tag's card: the form leaves a feature optional only where every tag imputes it.
  try {
    const cards = await Promise.all(tags.map((t) => loadCard(t)));
    if (state.model !== model) return; // another model was opened meanwhile
    const optional = cards.reduce(
      (common, card) => common.filter((n) => card.accepts_missing.includes(n)),
      model.schema.features.map((f) => f.name),
    );
    buildForm(model, new Set(optional), cards[0].examples || []);
    showCard();
  } catch (error) {
    if (state.model !== model) return;
    buildForm(model, new Set(), []);
    showError("card-error", error);
  }
  panel.dataset.ready = model.name;
  if (!document.getElementById("panel-drift").hidden) showDrift(document.getElementById("drift-tag").value);
}

function fillSelect(select, options) {
  select.replaceChildren(...options.map(([value, text]) => element("option", { value, text })));
}

// ---- The form -------------------------------------------------------------------------

function buildForm(model, optional, examples) {
  const container = document.getElementById("features");
  container.replaceChildren();
  const everyOptional = model.schema.features.every((f) => optional.has(f.name));
  const note = document.getElementById("form-note");
  note.textContent = everyOptional
    ? "Every feature may be left empty: the model fills it in."
    : optional.size
      ? "Features marked so may be left empty: the model fills them in."
      : "Every feature is needed: this model fills none in.";
  model.schema.features.forEach((feature, index) => {
    const id = `feature-${index}`;
    const canBeEmpty = optional.has(feature.name);
    let input;
    let hint;
    if (feature.kind === "categorical") {
      const choices = feature.categories.map((c) => [c, c]);
      input = element("select", { id, "data-feature": feature.name, "aria-describedby": `${id}-hint ${id}-check` });
      fillSelect(input, canBeEmpty ? [["", "(missing)"], ...choices] : choices);
      hint = `One of the ${feature.categories.length} categories seen in training.`;
    } else {
      // Text, not type=number: a browser's number field turns what it cannot read ("1,5",
      // "abc") into an empty value without a word; here the page reads it and says so.
      input = element("input", {
        id,
        type: "text",
        inputmode: "decimal",
        autocomplete: "off",
        spellcheck: "false",
        "data-feature": feature.name,
        "aria-describedby": `${id}-hint ${id}-check`,
        required: !canBeEmpty,
      });
      input.addEventListener("input", () => checkField(input));
      hint = `Training range ${formatNumber(feature.min)} to ${formatNumber(feature.max)}.`;
    }
    if (canBeEmpty && !everyOptional) hint += " May be left empty: the model fills it in.";
    container.append(
      element(
        "div",
        { className: "field" },
        element("label", { for: id, text: feature.name }),
        input,
        element("small", { id: `${id}-hint`, className: "hint", text: hint }),
        element("small", { id: `${id}-check`, className: "check", "aria-live": "polite" }),
      ),
    );
  });
  state.examples = examples.length ? examples : [madeUpExample(model.schema)];
  const made = !examples.length;
  fillSelect(
    document.getElementById("example-choice"),
    state.examples.map((e, i) => [String(i), exampleName(e, model.schema, made)]),
  );
  document.getElementById("example-hint").textContent = made
    ? "This tag stores no training rows: the example is made up from the middle of each training range."
    : `Rows of the training data (${state.examples.length}), as the model saw them.`;
}

function exampleName(example, schema, made) {
  if (made) return "A made-up row (middle of each range)";
  const target = typeof example.target === "number" ? formatNumber(example.target) : example.target;
  return schema.task === "classification" ? `A training row of class ${target}` : `A training row with target ${target}`;
}

// For a tag registered before examples were stored: the middle of each range, whole where
// the range's ends are whole (a count stays a count), and the first category.
function madeUpExample(schema) {
  const values = {};
  for (const f of schema.features) {
    if (f.kind === "categorical") values[f.name] = f.categories[0];
    else {
      const middle = (f.min + f.max) / 2;
      values[f.name] = Number.isInteger(f.min) && Number.isInteger(f.max) ? Math.round(middle) : Number(middle.toPrecision(4));
    }
  }
  return { target: null, values };
}

function fillExample() {
  const example = state.examples[Number(document.getElementById("example-choice").value) || 0];
  for (const input of document.querySelectorAll("#features [data-feature]")) {
    const value = example.values[input.dataset.feature];
    if (input.tagName === "SELECT") {
      const wanted = value === null || value === undefined ? "" : String(value);
      input.value = [...input.options].some((o) => o.value === wanted) ? wanted : input.options[0].value;
    } else {
      input.value = value === null || value === undefined ? "" : String(value);
      checkField(input);
    }
  }
}

// Check one numeric field as it is typed: an error (not sent), a value outside the training
// range (sent, with a warning), or what will be sent when it differs from what was typed.
function checkField(input) {
  const feature = featureOf(input.dataset.feature);
  const check = document.getElementById(`${input.id}-check`);
  const parsed = parseNumber(input.value);
  let text = "";
  let kind = "";
  if (parsed.error) [text, kind] = [parsed.error, "field-error"];
  else if (parsed.value === null && input.required) [text, kind] = ["", ""];
  else if (parsed.value !== null) {
    const notes = [];
    if (parsed.shown !== undefined) notes.push(`sent as ${parsed.shown}`);
    if (parsed.value < feature.min || parsed.value > feature.max) {
      notes.push(`outside the training range ${formatNumber(feature.min)} to ${formatNumber(feature.max)}: the answer is an extrapolation`);
      kind = "field-warning";
    } else kind = "field-note";
    text = notes.join("; ");
  }
  check.textContent = text;
  check.className = `check ${kind}`;
  if (parsed.error) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
  return parsed;
}

// The record the form sends, or an Error listing every field to fix.
function formRecord() {
  const record = {};
  const problems = [];
  let firstBad = null;
  for (const input of document.querySelectorAll("#features [data-feature]")) {
    const feature = featureOf(input.dataset.feature);
    if (feature.kind === "categorical") {
      record[feature.name] = input.value === "" ? null : input.value;
      continue;
    }
    const parsed = checkField(input);
    if (parsed.error) problems.push(`${feature.name}: ${parsed.error}`);
    else if (parsed.value === null && input.required)
      problems.push(`${feature.name} is required (this model does not fill it in)`);
    if ((parsed.error || (parsed.value === null && input.required)) && !firstBad) firstBad = input;
    record[feature.name] = parsed.error ? null : parsed.value;
  }
  if (problems.length) {
    if (firstBad) firstBad.focus();
    throw new Error(`nothing was sent; fix ${problems.length === 1 ? "this field" : "these fields"}: ${problems.join("; ")}`);
  }
  return record;
}

function predictPath(model, version) {
  const name = encodeURIComponent(model.name);
  return version
    ? `v1/models/${name}/versions/${encodeURIComponent(version)}/predict`
    : `v1/models/${name}/predict`;
}

function resetAnswer() {
  for (const id of ["prediction", "show-request", "predict-error"]) document.getElementById(id).hidden = true;
  document.getElementById("answer-placeholder").hidden = false;
}

async function predict(event) {
  event.preventDefault();
  showError("predict-error", null);
  const model = state.model;
  try {
    const record = formRecord();
    const version = document.getElementById("version").value;
    const callerKey = document.getElementById("caller-key").value.trim();
    const request = { instances: [record] };
    if (document.getElementById("explain").checked) request.explain = true;
    const body = JSON.stringify(request, null, 2);
    const path = predictPath(model, version);
    showRequest(path, body, callerKey);
    const started = performance.now();
    const { data } = await api(path, { body, callerKey });
    const elapsed = performance.now() - started;
    if (state.model !== model) return;
    showPrediction(data, elapsed, record);
    showExplanation(data.explanation, data.predictions[0], record);
  } catch (error) {
    document.getElementById("prediction").hidden = true;
    showError("predict-error", error);
  }
  document.getElementById("answer-placeholder").hidden = true;
  const panel = document.getElementById("answer");
  panel.dataset.answers = String(Number(panel.dataset.answers || 0) + 1); // answers (or refusals) shown so far
  revealAnswer();
}

// One column (a phone): bring the answer into view, below the form.
function revealAnswer() {
  if (!window.matchMedia("(max-width: 60rem)").matches) return;
  const title = document.getElementById("answer-title");
  title.scrollIntoView({ block: "start" });
  title.focus({ preventScroll: true });
}

function showPrediction(data, elapsed, record) {
  const predicted = data.predictions[0];
  document.getElementById("predicted-label").textContent =
    state.model.task === "classification" ? "Predicted class" : "Predicted value";
  const shown = document.getElementById("predicted");
  shown.textContent = typeof predicted === "number" ? formatNumber(predicted) : predicted;
  shown.dataset.value = String(predicted);
  const bars = document.getElementById("probabilities");
  bars.replaceChildren();
  if (data.probabilities) {
    data.classes.forEach((name, i) => {
      const p = data.probabilities[0][i];
      const fill = element("div", { className: "fill" });
      fill.style.width = `${(p * 100).toFixed(2)}%`;
      bars.append(
        element(
          "li",
          { "data-class": name, "data-probability": String(p), className: name === predicted ? "chosen" : "" },
          element("span", { className: "name", text: name }),
          element("div", { className: "track", "aria-hidden": "true" }, fill),
          element("span", { className: "value", text: percent(p) }),
        ),
      );
    });
  }
  document.getElementById("answer-tag").textContent = data.tag;
  document.getElementById("answer-latency").textContent = `${elapsed.toFixed(1)} ms`;
  const warnings = data.warnings || [];
  document.getElementById("answer-warnings").replaceChildren(...warnings.map((w) => element("li", { text: w })));
  document.getElementById("outside-badge").hidden = !warnings.some((w) => w.includes("outside the training range"));
  const names = Object.keys(record);
  const missing = names.filter((n) => record[n] === null).length;
  const note = document.getElementById("missing-note");
  note.textContent = `${missing} of ${names.length} features missing, filled in by the model.`;
  note.dataset.missing = String(missing);
  note.hidden = missing === 0;
  document.getElementById("prediction").hidden = false;
}

// ---- Show request: the JSON and a curl command --------------------------------------

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function showRequest(path, body, callerKey) {
  const lines = [`curl -s -X POST ${shellQuote(apiUrl(path))}`, "-H 'Content-Type: application/json'"];
  if (sessionStorage.getItem(KEY_STORAGE)) lines.push(`-H "Authorization: Bearer $API_KEY"`);
  if (callerKey) lines.push(`-H ${shellQuote(`X-Request-Key: ${callerKey}`)}`);
  lines.push(`-d ${shellQuote(body)}`);
  document.getElementById("request-json").textContent = body;
  document.getElementById("request-curl").textContent = lines.join(" \\\n  ");
  document.getElementById("copy-status").textContent = "";
  document.getElementById("show-request").hidden = false;
}

async function copyCurl() {
  const text = document.getElementById("request-curl").textContent;
  const status = document.getElementById("copy-status");
  try {
    await navigator.clipboard.writeText(text);
    status.textContent = "Copied.";
  } catch (_) {
    // Without clipboard access (an insecure origin): select it, for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById("request-curl"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    status.textContent = "Selected: press Ctrl+C (this browser gives the page no clipboard here).";
  }
}

// ---- Explanations (docs/explanations.md) ------------------------------------------

// How each output space of an explanation reads in a sentence.
const SPACES = {
  log_odds: "log-odds",
  logits: "logit",
  decision_function: "decision function",
  value: "predicted value",
  log_value: "log of the predicted value",
};
const REFERENCES = {
  imputed_missing: "the output for a typical row (training medians and most frequent categories)",
  transformed_zero: "the model's intercept",
  training_cover: "the average output over the training sample",
};

function signed(value) {
  return value > 0 ? `+${formatNumber(value)}` : formatNumber(value);
}

// The contributions of the answer's one row, towards the predicted class: a multi-class
// model has one explanation per class; a binary one explains the second class's log-odds,
// which for the first class are the same numbers with the opposite sign.
function showExplanation(explanation, predicted, record) {
  const box = document.getElementById("explanation");
  if (!explanation) {
    box.hidden = true;
    return;
  }
  let contributions = explanation.contributions[0];
  let base = explanation.base_value;
  let output = explanation.outputs[0];
  let explained = explanation.class || null;
  let flipped = null;
  if (explanation.classes) {
    explained = predicted;
    contributions = contributions[predicted];
    base = base[predicted];
    output = output[predicted];
  } else if (explained !== null && explained !== predicted && state.model.schema.classes.length === 2) {
    flipped = explained;
    explained = predicted;
    contributions = Object.fromEntries(Object.entries(contributions).map(([f, v]) => [f, -v]));
    base = -base;
    output = -output;
  }
  const space = SPACES[explanation.space] || explanation.space;
  const target = explained === null ? `the ${space}` : `the ${space} of "${explained}"`;
  const ranked = Object.entries(contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const top = ranked.slice(0, TOP_CONTRIBUTIONS);
  const rest = ranked.slice(TOP_CONTRIBUTIONS);
  const largest = Math.max(...top.map(([, v]) => Math.abs(v))) || 1;

  const summary = [
    `Contributions to ${target}${explained !== null && explained === predicted ? ", the predicted class" : ""} (method ${explanation.method}),`,
    `largest first: ${top.length} of ${ranked.length} features.`,
    `Positive values push ${explained === null ? "the output up" : `towards "${explained}"`}, negative ones`,
    `${explained === null ? "down" : "away from it"}; the base value is ${REFERENCES[explanation.reference] || explanation.reference}.`,
  ];
  if (flipped !== null)
    summary.push(`(The API explains the ${space} of "${flipped}": the same numbers with the opposite sign.)`);
  document.getElementById("explanation-summary").textContent = summary.join(" ");
  const list = document.getElementById("contributions");
  list.replaceChildren(
    ...top.map(([feature, value]) => {
      const input = record[feature];
      const fill = element("div", { className: "fill" });
      const width = (Math.abs(value) / largest) * 50;
      fill.style.width = `${width.toFixed(2)}%`;
      fill.style.marginLeft = `${(value < 0 ? 50 - width : 50).toFixed(2)}%`;
      return element(
        "li",
        { "data-feature": feature, "data-contribution": String(value), className: value < 0 ? "negative" : "positive" },
        element("span", { className: "name", text: `${feature} = ${input === null || input === undefined ? "missing" : input}` }),
        element("div", { className: "track", "aria-hidden": "true" }, fill),
        element("span", { className: "value", text: signed(value) }),
      );
    }),
  );
  if (rest.length) {
    const others = rest.reduce((sum, [, v]) => sum + v, 0);
    list.append(
      element(
        "li",
        { className: "others" },
        element("span", { className: "name", text: `${rest.length} other features` }),
        element("div", { className: "track", "aria-hidden": "true" }),
        element("span", { className: "value", text: signed(others) }),
      ),
    );
  }
  const total = ranked.reduce((sum, [, v]) => sum + v, 0);
  for (const [id, value] of [["explain-base", base], ["explain-sum", total], ["explain-output", output]]) {
    const shown = document.getElementById(id);
    shown.textContent = `${formatNumber(value)} (${space})`;
    shown.dataset.value = String(value);
  }
  box.hidden = false;
}

// ---- CSV scoring, in parts of at most max_rows_per_request rows --------------------

// RFC 4180: commas, double quotes around fields, "" inside quotes, CRLF or LF line ends.
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  let i = 0;
  if (text.charCodeAt(0) === 0xfeff) i = 1; // a byte order mark
  for (; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (quoted) throw new Error("the file ends inside a quoted field");
  if (field !== "" || row.length) {
    row.push(field);
    rows.push(row);
  }
  return rows.filter((r) => !(r.length === 1 && r[0].trim() === ""));
}

function csvRecords(rows, schema) {
  if (rows.length < 2) throw new Error("the file needs a header row and at least one row of values");
  const header = rows[0].map((h) => h.trim());
  const names = schema.features.map((f) => f.name);
  const missing = names.filter((n) => !header.includes(n));
  if (missing.length) throw new Error(`the file lacks the columns ${missing.join(", ")} (header: ${header.join(", ")})`);
  const columns = schema.features.map((f) => [f, header.indexOf(f.name)]);
  const records = rows.slice(1).map((cells, r) => {
    if (cells.length !== header.length)
      throw new Error(`line ${r + 2} has ${cells.length} fields; the header has ${header.length}`);
    const record = {};
    for (const [feature, index] of columns) {
      const text = cells[index].trim();
      // A text that is not a number goes as it is: the server answers which field is wrong.
      if (text === "") record[feature.name] = null;
      else if (feature.kind === "categorical") record[feature.name] = text;
      else record[feature.name] = PLAIN_NUMBER.test(text) && Number.isFinite(Number(text)) ? Number(text) : text;
    }
    return record;
  });
  return { header, records, inputs: rows.slice(1) };
}

// The parts a file is sent in: at most max_rows_per_request rows, and small enough for
// max_body_bytes (a part too large is halved until it fits).
function* parts(records, limits) {
  const encoder = new TextEncoder();
  let start = 0;
  let size = limits.max_rows_per_request;
  while (start < records.length) {
    const rows = records.slice(start, start + size);
    const body = JSON.stringify({ instances: rows });
    const bytes = encoder.encode(body).length;
    if (bytes > limits.max_body_bytes) {
      if (rows.length === 1)
        throw new Error(
          `row ${start + 1} alone makes a request of ${formatBytes(bytes)}; the server takes at most ${formatBytes(limits.max_body_bytes)}`,
        );
      size = Math.max(1, Math.floor(rows.length / 2));
      continue;
    }
    yield { start, rows: rows.length, body };
    start += rows.length;
  }
}

function formatBytes(bytes) {
  return bytes >= 1048576 ? `${formatNumber(bytes / 1048576)} MiB` : `${formatNumber(bytes / 1024)} KiB`;
}

function cancelScoring() {
  if (state.scoring) state.scoring.abort();
  state.scoring = null;
}

async function scoreCsv(event) {
  event.preventDefault();
  showError("csv-error", null);
  cancelScoring();
  document.getElementById("csv-result").hidden = true;
  const file = document.getElementById("csv-file").files[0];
  const model = state.model;
  const scoring = new AbortController();
  state.scoring = scoring;
  const progressBox = document.getElementById("csv-progress-box");
  const bar = document.getElementById("csv-progress");
  const progressText = document.getElementById("csv-progress-text");
  const cancel = document.getElementById("csv-cancel");
  let done = 0;
  try {
    if (!file) throw new Error("choose a CSV file first");
    const { header, records, inputs } = csvRecords(parseCsv(await file.text()), model.schema);
    const version = document.getElementById("version").value;
    // Without a pinned version or a caller key, the parts would each go through the A/B
    // split; one key for the whole file keeps them on one tag.
    const callerKey =
      document.getElementById("caller-key").value.trim() || (version ? "" : `csv-${Math.random().toString(36).slice(2)}`);
    bar.max = records.length;
    bar.value = 0;
    progressText.textContent = `0 of ${formatCount(records.length)} rows scored`;
    progressBox.hidden = false;
    cancel.hidden = false;
    const started = performance.now();
    const answers = [];
    const warnings = [];
    const tags = new Set();
    const chunks = [...parts(records, state.limits)];
    for (const part of chunks) {
      const { data } = await api(predictPath(model, version), { body: part.body, callerKey, signal: scoring.signal });
      answers.push(data);
      tags.add(data.tag);
      const where = chunks.length > 1 ? `rows ${formatCount(part.start + 1)} to ${formatCount(part.start + part.rows)}: ` : "";
      for (const w of data.warnings || []) warnings.push(where + w);
      done += part.rows;
      const seconds = (performance.now() - started) / 1000;
      bar.value = done;
      progressText.textContent =
        `${formatCount(done)} of ${formatCount(records.length)} rows scored, ` +
        `${formatCount(Math.round(done / Math.max(seconds, 1e-3)))} rows/s`;
    }
    const joined = {
      tag: [...tags].join(", "),
      classes: answers[0].classes,
      predictions: answers.flatMap((a) => a.predictions),
      probabilities: answers[0].probabilities ? answers.flatMap((a) => a.probabilities) : null,
    };
    showScores(header, inputs, joined, performance.now() - started, file.name, chunks.length, warnings);
  } catch (error) {
    if (error.name !== "AbortError") showError("csv-error", error);
    else if (scoring.byUser) showError("csv-error", new Error(`cancelled after ${formatCount(done)} rows; nothing was kept`));
  } finally {
    if (state.scoring === scoring) {
      state.scoring = null;
      cancel.hidden = true;
    }
  }
}

function showScores(header, inputs, data, elapsed, fileName, requests, warnings) {
  const outputs = ["prediction", ...(data.classes || []).map((c) => `probability ${c}`)];
  const table = document.getElementById("csv-table");
  table.tHead.replaceChildren(element("tr", {}, ...[...header, ...outputs].map((h) => element("th", { scope: "col", text: h }))));
  const lines = [[...header, ...outputs]];
  const shown = [];
  inputs.forEach((cells, r) => {
    const values = [data.predictions[r], ...(data.probabilities ? data.probabilities[r] : [])];
    lines.push([...cells, ...values.map(String)]);
    if (r < PREVIEW_ROWS)
      shown.push(
        element(
          "tr",
          {},
          ...cells.map((c) => element("td", { text: c })),
          ...values.map((v, i) =>
            element("td", { className: i === 0 && typeof v !== "number" ? "" : "number", text: formatNumber(v) }),
          ),
        ),
      );
  });
  table.tBodies[0].replaceChildren(...shown);
  const parts = requests > 1 ? ` in ${requests} requests` : "";
  document.getElementById("csv-summary").textContent =
    `${formatCount(inputs.length)} rows scored by ${data.tag}${parts} in ${elapsed.toFixed(0)} ms.`;
  document.getElementById("csv-preview-title").textContent =
    inputs.length > PREVIEW_ROWS ? `The first ${PREVIEW_ROWS} of ${formatCount(inputs.length)} rows` : "Every row";
  const counts = document.getElementById("csv-counts");
  if (data.classes) {
    const perClass = Object.fromEntries(data.classes.map((c) => [c, 0]));
    for (const p of data.predictions) perClass[p] += 1;
    counts.textContent = `Predicted: ${data.classes.map((c) => `${c} ${formatCount(perClass[c])}`).join(", ")}.`;
    counts.dataset.counts = JSON.stringify(perClass);
  } else {
    const sorted = [...data.predictions].sort((a, b) => a - b);
    const median = sorted[Math.floor((sorted.length - 1) / 2)];
    counts.textContent = `Predicted values from ${formatNumber(sorted[0])} to ${formatNumber(sorted[sorted.length - 1])}, median ${formatNumber(median)}.`;
    delete counts.dataset.counts;
  }
  document.getElementById("csv-warnings").replaceChildren(...warnings.map((w) => element("li", { text: w })));
  const link = document.getElementById("csv-download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  const csv = lines.map((line) => line.map(csvField).join(",")).join("\r\n") + "\r\n";
  link.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
  link.download = fileName.replace(/\.csv$/i, "") + "-predictions.csv";
  document.getElementById("csv-result").hidden = false;
}

// A cell that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a
// carriage return) is written as text: a ' in front, the whole field quoted (OWASP's advice
// on CSV injection). A number stays a number, a negative one included.
const FORMULA_START = /^[=+\-@\t\r]/;
const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

function csvField(value) {
  if (FORMULA_START.test(value) && !NUMBER.test(value)) return `"'${value.replace(/"/g, '""')}"`;
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

// ---- Model cards --------------------------------------------------------------------

function versionPath(tag, what) {
  const [name, version] = [tag.slice(0, tag.indexOf(":")), versionOf(tag)];
  return `v1/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/${what}`;
}

async function loadCard(tag) {
  if (!state.cards[tag]) state.cards[tag] = (await api(versionPath(tag, "card"))).data;
  return state.cards[tag];
}

async function showCard() {
  showError("card-error", null);
  const tag = document.getElementById("card-tag").value;
  try {
    const card = await loadCard(tag);
    if (document.getElementById("card-tag").value !== tag) return; // chosen again meanwhile
    document.getElementById("model-card").replaceChildren(...cardView(card));
    showLiveQuality(tag); // live outcomes: asked for each time, never kept
  } catch (error) {
    showError("card-error", error);
  }
}

function facts(pairs) {
  const list = element("dl", { className: "facts" });
  for (const [name, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    list.append(element("dt", { text: name }), element("dd", { text: String(value) }));
  }
  return list;
}

function scrolling(label, table) {
  return element("div", { className: "scroll", role: "region", "aria-label": label, tabindex: "0" }, table);
}

function cardView(card) {
  const t = card.training || {};
  const serving =
    card.serving.role === "variant"
      ? `variant, weight ${formatNumber(card.serving.weight)} %, runtime ${card.serving.runtime}`
      : card.serving.role;
  const onnx = t.onnx
    ? t.onnx.exported
      ? `exported, matched scikit-learn on ${t.onnx.rows_checked} held-out rows (max difference ${formatNumber(t.onnx.max_abs_difference)})`
      : `not exported: ${t.onnx.refusal}`
    : null;
  const about = facts([
    ["Tag", card.tag],
    ["Task", card.task],
    ["Algorithm", card.algorithm],
    ["Labels", Object.entries(card.labels).map(([k, v]) => `${k}=${v}`).join(", ")],
    ["Registered", card.created ? new Date(card.created).toISOString().replace(".000Z", "Z") : "unknown"],
    ["Serving", serving],
    ["Classes", card.schema.classes.join(", ")],
    ["Target", card.schema.target],
  ]);
  const data = facts([
    ["Training rows", t.training_rows],
    ["Held-out rows", t.test_rows],
    ["Sample rows", t.sample_rows],
    ["Seed", t.seed],
    ["Data SHA-256", t.data_sha256],
    ["Training command", t.command],
    ["Imported from", t.imported_from],
    ["scikit-learn", t.sklearn_version],
    ["ONNX export", onnx],
  ]);
  const metrics = element("table", { id: "card-metrics" });
  metrics.append(
    element("thead", {}, element("tr", {}, element("th", { scope: "col", text: "Metric" }), element("th", { scope: "col", text: "Value" }))),
    element(
      "tbody",
      {},
      ...Object.entries(card.metrics).map(([name, value]) =>
        element("tr", { "data-metric": name }, element("th", { scope: "row", text: name }), element("td", { className: "number", "data-value": String(value), text: formatNumber(value) })),
      ),
    ),
  );
  const optional = new Set(card.accepts_missing);
  const features = element("table", { id: "card-features" });
  features.append(
    element(
      "thead",
      {},
      element("tr", {}, ...["Feature", "Kind", "Range or categories", "Missing allowed"].map((h) => element("th", { scope: "col", text: h }))),
    ),
    element(
      "tbody",
      {},
      ...card.schema.features.map((f) =>
        element(
          "tr",
          {},
          element("th", { scope: "row", text: f.name }),
          element("td", { text: f.kind || "numeric" }),
          element("td", { text: f.kind === "categorical" ? f.categories.join(", ") : `${formatNumber(f.min)} to ${formatNumber(f.max)}` }),
          element("td", { text: optional.has(f.name) ? "yes" : "no" }),
        ),
      ),
    ),
  );
  return [
    element("h3", { text: card.tag }),
    about,
    element("h4", { text: "Metrics (held-out and cross-validation)" }),
    scrolling(`Metrics of ${card.tag}`, metrics),
    element("h4", { text: "Data and training" }),
    data,
    element("h4", { text: "Features" }),
    scrolling(`Features of ${card.tag}`, features),
  ];
}

// ---- Drift of a tag (docs/monitoring.md) -----------------------------------------------

function psiReading(psi, thresholds) {
  if (psi === null || psi === undefined) return ["no rows yet", ""];
  if (psi > thresholds.significant) return ["significant shift", "psi-significant"];
  if (psi >= thresholds.moderate) return ["moderate shift", "psi-moderate"];
  return ["stable", ""];
}

async function showDrift(tag) {
  if (!tag) return;
  const section = document.getElementById("drift");
  const message = document.getElementById("drift-message");
  const result = document.getElementById("drift-result");
  const list = document.getElementById("drift-window");
  const current = () => document.getElementById("drift-tag").value === tag;
  if (section.dataset.tag !== tag) {
    // Another tag's drift must not stand for this one's while it loads.
    result.hidden = true;
    message.hidden = true;
    list.hidden = true;
    delete section.dataset.tag;
  }
  section.setAttribute("aria-busy", "true");
  let answer;
  try {
    answer = (await api(versionPath(tag, "drift"))).data;
  } catch (error) {
    if (!current()) return;
    // 409: the tag has no drift reference, or counting is off; the server says which.
    result.hidden = true;
    list.hidden = true;
    message.textContent = error instanceof ApiError ? error.message : `Error: ${error.message || error}`;
    message.hidden = false;
    section.removeAttribute("aria-busy");
    section.dataset.tag = tag;
    return;
  }
  if (!current()) return;
  section.removeAttribute("aria-busy");
  const found = answer.tags.find((t) => t.tag === tag) || answer.tags[0];
  if (!found.reference) {
    result.hidden = true;
    list.hidden = true;
    message.textContent = found.message;
    message.hidden = false;
    section.dataset.tag = tag;
    return;
  }
  const thresholds = answer.thresholds;
  const counted = found.window;
  const minimum = thresholds.minimum_rows; // the server's: the PSI of fewer rows is noise
  document.getElementById("drift-minimum").textContent = `Fewer than ${minimum} rows give no reading`;
  const enough = counted.rows >= minimum;
  const rows = element("dd", { id: "drift-rows", "data-rows": String(counted.rows), text: formatCount(counted.rows) });
  const pairs = [
    ["Window since", counted.since ? `${counted.since} (the last routing change or server start)` : "not started: no rows yet"],
    ["Rows per worker", counted.rows_per_worker.length ? counted.rows_per_worker.join(", ") : null],
    ["Training rows of the reference", found.reference_rows],
  ];
  if (enough) {
    const [predictionsReading] = psiReading(found.psi.predictions, thresholds);
    const top = found.top_drifting.map((t) => `${t.feature} (${formatNumber(t.psi)})`).join(", ");
    pairs.push(["Predictions PSI", `${formatNumber(found.psi.predictions)} (${predictionsReading})`], ["Most drifted", top || null]);
  }
  list.replaceChildren(element("dt", { text: "Rows in the window" }), rows);
  for (const [name, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(element("dt", { text: name }), element("dd", { text: String(value) }));
  }
  list.hidden = false;
  if (!enough) {
    message.textContent = `${formatCount(counted.rows)} ${counted.rows === 1 ? "row" : "rows"}: at least ${minimum} needed for a reading.`;
    message.hidden = false;
    result.hidden = true;
    section.dataset.tag = tag;
    return;
  }
  message.hidden = true;
  document.querySelector("#drift-table tbody").replaceChildren(
    ...found.features.map((f) => {
      const [reading, className] = psiReading(f.psi, thresholds);
      return element(
        "tr",
        { "data-feature": f.name, className },
        element("th", { scope: "row", text: f.name }),
        element("td", { text: f.kind }),
        element("td", { className: "number", "data-psi": f.psi === null ? "" : String(f.psi), text: f.psi === null ? "none" : formatNumber(f.psi) }),
        element("td", { className: "reading", text: reading }),
      );
    }),
  );
  const choice = document.getElementById("drift-feature");
  const kept = choice.value;
  const charted = [...found.features, { ...found.predictions, name: found.predictions.name || "predictions" }];
  fillSelect(choice, charted.map((f, i) => [String(i), i === charted.length - 1 ? "the predictions" : f.name]));
  choice.value = kept && Number(kept) < charted.length ? kept : "0";
  state.driftBins = charted;
  drawBins();
  result.hidden = false;
  section.dataset.tag = tag;
}

// The chosen feature's bins: the share of training rows and of live rows in each.
function drawBins() {
  const chosen = state.driftBins[Number(document.getElementById("drift-feature").value) || 0];
  const live = chosen.bins.reduce((sum, b) => sum + b.count, 0) || 1;
  const largest = Math.max(...chosen.bins.map((b) => Math.max(b.expected, b.count / live))) || 1;
  const chart = document.getElementById("drift-chart");
  chart.dataset.feature = chosen.name;
  chart.replaceChildren(
    ...chosen.bins.map((b) => {
      const share = b.count / live;
      const bar = (className, value) => {
        const fill = element("div", { className: `fill ${className}` });
        fill.style.width = `${((value / largest) * 100).toFixed(2)}%`;
        return element("div", { className: "track", "aria-hidden": "true" }, fill);
      };
      return element(
        "li",
        { "data-bin": b.bin, "data-expected": String(b.expected), "data-count": String(b.count) },
        element("span", { className: "name", text: b.bin }),
        element("span", { className: "pair" }, bar("training", b.expected), bar("live", share)),
        element("span", { className: "value", text: `training ${percent(b.expected)}, live ${percent(share)} (${formatCount(b.count)})` }),
      );
    }),
  );
}

// ---- Two tags side by side ----------------------------------------------------------------

async function showComparison() {
  showError("compare-error", null);
  const leftTag = document.getElementById("compare-left").value;
  const rightTag = document.getElementById("compare-tag").value;
  const box = document.getElementById("comparison");
  document.getElementById("compare-hint").hidden = Boolean(rightTag && rightTag !== leftTag);
  if (!rightTag || rightTag === leftTag) {
    box.hidden = true;
    return;
  }
  let left;
  let right;
  try {
    [left, right] = await Promise.all([loadCard(leftTag), loadCard(rightTag)]);
  } catch (error) {
    showError("compare-error", error);
    return;
  }
  const names = [...new Set([...Object.keys(left.metrics), ...Object.keys(right.metrics)])];
  const table = document.getElementById("compare-table");
  table.tHead.replaceChildren(
    element("tr", {}, ...["Metric", left.tag, right.tag, "Difference"].map((h) => element("th", { scope: "col", text: h }))),
  );
  const rows = names.map((name) => {
    const a = left.metrics[name];
    const b = right.metrics[name];
    const difference = typeof a === "number" && typeof b === "number" ? formatNumber(b - a) : "";
    return element(
      "tr",
      { "data-metric": name },
      element("th", { scope: "row", text: name }),
      element("td", { className: "number", text: a === undefined ? "" : formatNumber(a) }),
      element("td", { className: "number", text: b === undefined ? "" : formatNumber(b) }),
      element("td", { className: "number", text: difference }),
    );
  });
  rows.push(
    element("tr", {}, element("th", { scope: "row", text: "training rows" }), element("td", { className: "number", text: String(left.training.training_rows ?? "") }), element("td", { className: "number", text: String(right.training.training_rows ?? "") }), element("td", {})),
    element("tr", {}, element("th", { scope: "row", text: "algorithm" }), element("td", { text: left.algorithm || "" }), element("td", { text: right.algorithm || "" }), element("td", {})),
  );
  table.tBodies[0].replaceChildren(...rows);
  document.getElementById("shadow-agreement").textContent = await shadowAgreement(left, right);
  await showVerdict(left.tag, right.tag);
  if (document.getElementById("compare-tag").value !== rightTag) return;
  box.hidden = false;
}

// ---- Live quality and verdicts from outcomes (docs/monitoring.md) -----------------------

function interval(pair) {
  return pair ? `${formatNumber(pair[0])} to ${formatNumber(pair[1])}` : "";
}

async function showLiveQuality(tag) {
  const section = document.getElementById("live-quality");
  let answer;
  try {
    answer = (await api(versionPath(tag, "outcomes"))).data;
  } catch (error) {
    section.hidden = true;
    return;
  }
  if (document.getElementById("card-tag").value !== tag) return;
  const found = answer.tags.find((t) => t.tag === tag) || answer.tags[0];
  const live = found.live;
  const perWorker = found.outcomes_per_worker.length ? ` (per worker: ${found.outcomes_per_worker.join(", ")})` : "";
  document.getElementById("live-summary").textContent =
    `${live.outcomes} outcomes in the window of routing revision ${answer.routing_revision}${perWorker}.`;
  const heldout = found.heldout;
  const rows = [];
  for (const metric of ["accuracy", "log_loss", "brier", "mae", "rmse"]) {
    if (!live[metric]) continue;
    const value = live[metric].value;
    rows.push(
      element(
        "tr",
        { "data-metric": metric },
        element("th", { scope: "row", text: metric }),
        element("td", { className: "number", "data-value": value === null ? "" : String(value), text: value === null ? "no outcomes yet" : formatNumber(value) }),
        element("td", { className: "number", text: interval(live[metric].interval) }),
        element("td", { className: "number", text: heldout[metric] === undefined ? "" : formatNumber(heldout[metric]) }),
      ),
    );
  }
  for (const [label, recall] of Object.entries(live.recall || {})) {
    rows.push(
      element(
        "tr",
        { "data-metric": `recall ${label}` },
        element("th", { scope: "row", text: `recall of ${label} (${recall.support} rows)` }),
        element("td", { className: "number", text: recall.value === null ? "" : formatNumber(recall.value) }),
        element("td", { className: "number", text: interval(recall.interval) }),
        element("td", {}),
      ),
    );
  }
  document.querySelector("#live-table tbody").replaceChildren(...rows);
  section.hidden = false;
}

async function showVerdict(left, right) {
  const summary = document.getElementById("verdict-summary");
  const body = document.querySelector("#verdict-table tbody");
  body.replaceChildren();
  const name = left.slice(0, left.indexOf(":"));
  let answer;
  try {
    answer = (await api(`v1/models/${encodeURIComponent(name)}/outcomes`)).data;
  } catch (error) {
    summary.textContent = `Verdict unavailable: ${error.message}`;
    return;
  }
  const verdicts = (answer.verdicts || []).filter((v) => [v.a, v.b].includes(left) && [v.a, v.b].includes(right));
  if (!verdicts.length) {
    summary.textContent = "These two tags are not both variants of the name, so there is no verdict (the shadow's predictions carry no ids).";
    return;
  }
  const first = verdicts[0];
  summary.textContent = `${first.b} against ${first.a}: difference = ${first.b} minus ${first.a}; ${first.rows[0]} and ${first.rows[1]} outcomes in ${first.units[0]} and ${first.units[1]} units.`;
  body.replaceChildren(
    ...verdicts.map((v) =>
      element(
        "tr",
        { "data-metric": v.metric },
        element("th", { scope: "row", text: `${v.metric} (${v.better} is better)` }),
        element("td", { className: "number", text: v.difference === null ? "" : formatNumber(v.difference) }),
        element("td", { className: "number", text: interval(v.interval) }),
        element("td", { className: "number", text: v.p_value === null ? "" : formatNumber(v.p_value) }),
        element("td", { className: "number", text: `${v.units[0]} / ${v.units[1]}` }),
        element("td", { className: "verdict", text: v.interval ? v.verdict : v.message }),
      ),
    ),
  );
}

// Shadow agreement from the server's Prometheus counters (model_server_shadow_comparisons):
// the sum over this server's workers since it started; other replicas count apart.
async function shadowAgreement(left, right) {
  const pair = [left.tag, right.tag];
  const shadow = pair.find((t) => state.cards[t] && state.cards[t].serving.role === "shadow");
  if (!shadow) return "Neither tag is the shadow of the other, so there is no shadow agreement to show.";
  const live = pair.find((t) => t !== shadow);
  let text;
  try {
    text = (await api("metrics", { accept: "text" })).data;
  } catch (error) {
    return `Shadow agreement unavailable: ${error.message}`;
  }
  const counts = {};
  const pattern = /^model_server_shadow_comparisons_total\{([^}]*)\}\s+(\S+)/;
  for (const line of text.split("\n")) {
    const match = pattern.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...match[1].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (labels.tag !== live || labels.shadow_tag !== shadow) continue;
    counts[labels.outcome] = (counts[labels.outcome] || 0) + Number(match[2]);
  }
  const agree = counts.agree || 0;
  const disagree = counts.disagree || 0;
  const compared = counts.compared || 0;
  const scope = "on this server (all its workers) since it started";
  if (agree + disagree > 0)
    return `Shadow agreement of ${shadow} with ${live}: ${percent(agree / (agree + disagree))} of ${agree + disagree} rows ${scope}.`;
  if (compared > 0) return `${compared} rows of ${live} compared with the shadow ${shadow} ${scope}.`;
  return `No rows compared between ${live} and the shadow ${shadow} yet ${scope}.`;
}

// ---- Start ------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const keyInput = document.getElementById("api-key");
  const kept = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.value = kept;
  if (kept) document.getElementById("key-form").hidden = false;
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    state.cards = {};
    loadModels();
  });
  for (const tab of TABS) {
    const button = document.getElementById(`tab-${tab}`);
    button.addEventListener("click", () => selectTab(tab));
    button.addEventListener("keydown", tabKeys);
  }
  document.getElementById("predict-form").addEventListener("submit", predict);
  document.getElementById("example-button").addEventListener("click", fillExample);
  document.getElementById("copy-curl").addEventListener("click", copyCurl);
  document.getElementById("csv-form").addEventListener("submit", scoreCsv);
  document.getElementById("csv-cancel").addEventListener("click", () => {
    const scoring = state.scoring;
    if (!scoring) return;
    scoring.byUser = true;
    scoring.abort();
  });
  document.getElementById("card-tag").addEventListener("change", showCard);
  document.getElementById("drift-tag").addEventListener("change", () => showDrift(document.getElementById("drift-tag").value));
  document.getElementById("drift-feature").addEventListener("change", drawBins);
  document.getElementById("compare-left").addEventListener("change", showComparison);
  document.getElementById("compare-tag").addEventListener("change", showComparison);
  document.getElementById("drift-refresh").addEventListener("click", () => {
    const tag = document.getElementById("drift-tag").value;
    if (tag) showDrift(tag);
  });
  // Changing #model in the address opens that model.
  window.addEventListener("hashchange", () => {
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (state.details[wanted] && (!state.model || state.model.name !== wanted)) openModel(wanted);
  });
  loadModels();
});
