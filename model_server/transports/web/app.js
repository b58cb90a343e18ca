// The web page at /ui: a client of the server's JSON API (/v1), nothing more.
// It lists the served models, builds a form from each model's training schema,
// predicts (with an explanation when asked), scores CSV files in the browser and shows
// model cards with each tag's drift. The API key the user types is kept in this tab's
// sessionStorage and sent as "Authorization: Bearer".
"use strict";

const KEY_STORAGE = "model-server-api-key";
const TOP_CONTRIBUTIONS = 5; // the explanation shows this many features, largest first
const state = { models: [], details: {}, limits: null, model: null, cards: {} };

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

async function api(path, { body = null, callerKey = "", accept = "json" } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["Authorization"] = `Bearer ${key}`;
  if (callerKey) headers["X-Request-Key"] = callerKey;
  if (body !== null) headers["Content-Type"] = "application/json";
  const options = { method: body === null ? "GET" : "POST", headers, cache: "no-store" };
  if (body !== null) options.body = typeof body === "string" ? body : JSON.stringify(body);
  const response = await fetch(apiUrl(path), options);
  const text = await response.text();
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
  if (response.status === 401) message += " (type the right API key above and press Use key)";
  return message;
}

function showError(id, error) {
  const element = document.getElementById(id);
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.textContent = error instanceof ApiError ? error.message : `Error: ${error.message || error}`;
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

function percent(p) {
  return `${(p * 100).toFixed(1)} %`;
}

function versionOf(tag) {
  return tag.slice(tag.indexOf(":") + 1);
}

function headlineMetric(metrics) {
  const names = Object.keys(metrics || {}).filter((n) => n.startsWith("holdout_"));
  return names.length ? [names[0].slice("holdout_".length), metrics[names[0]]] : null;
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
    document.getElementById("model-title").focus();
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
    {},
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

// ---- One model: form, CSV scoring, card -------------------------------------------

async function openModel(name) {
  const model = state.details[name];
  state.model = model;
  const panel = document.getElementById("model-panel");
  const title = document.getElementById("model-title");
  title.textContent = `${model.name} (${model.task})`;
  title.setAttribute("tabindex", "-1");
  panel.hidden = false;
  for (const id of ["predict-error", "csv-error", "card-error"]) showError(id, null);
  document.getElementById("prediction").hidden = true;
  document.getElementById("csv-result").hidden = true;
  document.getElementById("features").replaceChildren();
  document.getElementById("model-card").replaceChildren();
  document.getElementById("comparison").hidden = true;
  const drift = document.getElementById("drift");
  drift.hidden = true;
  delete drift.dataset.tag; // the tag whose drift it shows
  document.getElementById("drift-result").hidden = true;
  document.getElementById("drift-message").hidden = true;

  const tags = servedTags(model);
  fillSelect(document.getElementById("version"), [["", "A/B split (by weight)"], ...tags.map((t) => [versionOf(t), t])]);
  fillSelect(document.getElementById("card-tag"), tags.map((t) => [t, t]));
  fillSelect(document.getElementById("compare-tag"), [["", "nothing"], ...tags.map((t) => [t, t])]);
  document.getElementById("csv-hint").textContent =
    `Columns: ${model.schema.features.map((f) => f.name).join(", ")}. At most ${state.limits.max_rows_per_request} rows ` +
    `and ${formatBytes(state.limits.max_body_bytes)} per file; other columns are ignored; an empty cell is a missing value.`;

  // Every tag's card: the form leaves a feature optional only where every tag imputes it.
  try {
    const cards = await Promise.all(tags.map((t) => loadCard(t)));
    if (state.model !== model) return; // another model was opened meanwhile
    const optional = cards.reduce(
      (common, card) => common.filter((n) => card.accepts_missing.includes(n)),
      model.schema.features.map((f) => f.name),
    );
    buildForm(model, new Set(optional));
    showCard();
  } catch (error) {
    if (state.model !== model) return;
    buildForm(model, new Set());
    showError("card-error", error);
  }
}

function fillSelect(select, options) {
  select.replaceChildren(...options.map(([value, text]) => element("option", { value, text })));
}

function formatBytes(bytes) {
  return bytes >= 1048576 ? `${formatNumber(bytes / 1048576)} MiB` : `${formatNumber(bytes / 1024)} KiB`;
}

function buildForm(model, optional) {
  const container = document.getElementById("features");
  container.replaceChildren();
  model.schema.features.forEach((feature, index) => {
    const id = `feature-${index}`;
    const canBeEmpty = optional.has(feature.name);
    let input;
    let hint;
    if (feature.kind === "categorical") {
      const choices = feature.categories.map((c) => [c, c]);
      input = element("select", { id, "data-feature": feature.name, "aria-describedby": `${id}-hint` });
      fillSelect(input, canBeEmpty ? [["", "(missing)"], ...choices] : choices);
      hint = `One of the ${feature.categories.length} categories seen in training.`;
    } else {
      input = element("input", {
        id,
        type: "number",
        step: "any",
        inputmode: "decimal",
        "data-feature": feature.name,
        "aria-describedby": `${id}-hint`,
        required: !canBeEmpty,
      });
      hint = `Training range ${formatNumber(feature.min)} to ${formatNumber(feature.max)}.`;
    }
    if (canBeEmpty) hint += " May be left empty: the model fills it in.";
    container.append(
      element(
        "div",
        { className: "field" },
        element("label", { for: id, text: feature.name }),
        input,
        element("small", { id: `${id}-hint`, className: "hint", text: hint }),
      ),
    );
  });
}

function fillExample() {
  // The middle of each training range and the first category: a plausible row.
  for (const input of document.querySelectorAll("#features [data-feature]")) {
    const feature = state.model.schema.features.find((f) => f.name === input.dataset.feature);
    if (feature.kind === "categorical") input.value = feature.categories[0];
    else input.value = String(Number(((feature.min + feature.max) / 2).toPrecision(4)));
  }
}

function formRecord() {
  const record = {};
  const problems = [];
  for (const input of document.querySelectorAll("#features [data-feature]")) {
    const feature = state.model.schema.features.find((f) => f.name === input.dataset.feature);
    const text = input.value.trim();
    if (text === "") {
      if (input.required) problems.push(`${feature.name} is required (this model does not fill it in)`);
      record[feature.name] = null;
    } else if (feature.kind === "categorical") {
      record[feature.name] = text;
    } else {
      const number = Number(text);
      if (!Number.isFinite(number)) problems.push(`${feature.name} must be a number`);
      record[feature.name] = number;
    }
  }
  if (problems.length) throw new Error(problems.join("; "));
  return record;
}

function predictPath(model, version) {
  const name = encodeURIComponent(model.name);
  return version
    ? `v1/models/${name}/versions/${encodeURIComponent(version)}/predict`
    : `v1/models/${name}/predict`;
}

async function predict(event) {
  event.preventDefault();
  showError("predict-error", null);
  const result = document.getElementById("prediction");
  result.hidden = true;
  const model = state.model;
  try {
    const record = formRecord();
    const version = document.getElementById("version").value;
    const callerKey = document.getElementById("caller-key").value.trim();
    const body = { instances: [record] };
    if (document.getElementById("explain").checked) body.explain = true;
    const started = performance.now();
    const { data } = await api(predictPath(model, version), { body, callerKey });
    const elapsed = performance.now() - started;
    showPrediction(data, elapsed);
    showExplanation(data.explanation, data.predictions[0], record);
  } catch (error) {
    showError("predict-error", error);
  }
}

function showPrediction(data, elapsed) {
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
  const warnings = document.getElementById("answer-warnings");
  warnings.replaceChildren(...(data.warnings || []).map((w) => element("li", { text: w })));
  document.getElementById("prediction").hidden = false;
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

// The contributions of the answer's one row: for a multi-class model, the predicted class's.
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
  if (explanation.classes) {
    explained = predicted;
    contributions = contributions[predicted];
    base = base[predicted];
    output = output[predicted];
  }
  const space = SPACES[explanation.space] || explanation.space;
  const target = explained === null ? `the ${space}` : `the ${space} of "${explained}"`;
  const ranked = Object.entries(contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const top = ranked.slice(0, TOP_CONTRIBUTIONS);
  const rest = ranked.slice(TOP_CONTRIBUTIONS);
  const largest = Math.max(...top.map(([, v]) => Math.abs(v))) || 1;

  const summary = [
    `Contributions to ${target}${explanation.classes ? ", the predicted class" : ""} (method ${explanation.method}),`,
    `largest first: ${top.length} of ${ranked.length} features.`,
    `Positive values push ${explained === null ? "the output up" : `towards "${explained}"`}, negative ones`,
    `${explained === null ? "down" : "away from it"}; the base value is ${REFERENCES[explanation.reference] || explanation.reference}.`,
  ];
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

// ---- CSV scoring ----------------------------------------------------------------

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
      else record[feature.name] = Number.isFinite(Number(text)) ? Number(text) : text;
    }
    return record;
  });
  return { header, records, inputs: rows.slice(1) };
}

async function scoreCsv(event) {
  event.preventDefault();
  showError("csv-error", null);
  const result = document.getElementById("csv-result");
  result.hidden = true;
  const file = document.getElementById("csv-file").files[0];
  const model = state.model;
  try {
    if (!file) throw new Error("choose a CSV file first");
    const { header, records, inputs } = csvRecords(parseCsv(await file.text()), model.schema);
    const limit = state.limits.max_rows_per_request;
    if (records.length > limit)
      throw new Error(`the file has ${records.length} rows; the server takes at most ${limit} rows per request`);
    const body = JSON.stringify({ instances: records });
    const size = new TextEncoder().encode(body).length;
    if (size > state.limits.max_body_bytes)
      throw new Error(
        `the rows make a request of ${formatBytes(size)}; the server takes at most ${formatBytes(state.limits.max_body_bytes)}`,
      );
    const version = document.getElementById("version").value;
    const callerKey = document.getElementById("caller-key").value.trim();
    const started = performance.now();
    const { data } = await api(predictPath(model, version), { body, callerKey });
    const elapsed = performance.now() - started;
    showScores(header, inputs, data, elapsed, file.name);
  } catch (error) {
    showError("csv-error", error);
  }
}

function showScores(header, inputs, data, elapsed, fileName) {
  const outputs = ["prediction", ...(data.classes || []).map((c) => `probability ${c}`)];
  const table = document.getElementById("csv-table");
  table.tHead.replaceChildren(element("tr", {}, ...[...header, ...outputs].map((h) => element("th", { scope: "col", text: h }))));
  const lines = [[...header, ...outputs]];
  const rows = inputs.map((cells, r) => {
    const values = [data.predictions[r], ...(data.probabilities ? data.probabilities[r] : [])];
    lines.push([...cells, ...values.map(String)]);
    return element(
      "tr",
      {},
      ...cells.map((c) => element("td", { text: c })),
      ...values.map((v, i) =>
        element("td", { className: i === 0 && typeof v !== "number" ? "" : "number", text: formatNumber(v) }),
      ),
    );
  });
  table.tBodies[0].replaceChildren(...rows);
  document.getElementById("csv-summary").textContent =
    `${inputs.length} rows scored by ${data.tag} in ${elapsed.toFixed(0)} ms.`;
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
  const other = document.getElementById("compare-tag").value;
  try {
    const card = await loadCard(tag);
    if (document.getElementById("card-tag").value !== tag) return; // chosen again meanwhile
    document.getElementById("model-card").replaceChildren(...cardView(card));
    document.getElementById("comparison").hidden = true;
    showDrift(tag); // live counts: asked for each time, never kept
    showLiveQuality(tag);
    if (other && other !== tag) await showComparison(card, await loadCard(other));
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
    element("h4", { text: card.tag }),
    about,
    element("h4", { text: "Metrics (held-out and cross-validation)" }),
    element("div", { className: "scroll" }, metrics),
    element("h4", { text: "Data and training" }),
    data,
    element("h4", { text: "Features" }),
    element("div", { className: "scroll" }, features),
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
  const section = document.getElementById("drift");
  const message = document.getElementById("drift-message");
  const result = document.getElementById("drift-result");
  const current = () => document.getElementById("card-tag").value === tag;
  if (section.dataset.tag !== tag) {
    // Another tag's drift must not stand for this one's while it loads.
    result.hidden = true;
    message.hidden = true;
    delete section.dataset.tag;
  }
  section.hidden = false;
  section.setAttribute("aria-busy", "true");
  let answer;
  try {
    answer = (await api(versionPath(tag, "drift"))).data;
  } catch (error) {
    if (!current()) return;
    // 409: the tag has no drift reference, or counting is off; the server says which.
    result.hidden = true;
    message.textContent = error instanceof ApiError ? error.message : `Error: ${error.message || error}`;
    message.hidden = false;
    section.removeAttribute("aria-busy");
    section.dataset.tag = tag;
    return;
  }
  if (!current()) return;
  section.removeAttribute("aria-busy");
  section.dataset.tag = tag;
  const found = answer.tags.find((t) => t.tag === tag) || answer.tags[0];
  if (!found.reference) {
    result.hidden = true;
    message.textContent = found.message;
    message.hidden = false;
    return;
  }
  message.hidden = true;
  const thresholds = answer.thresholds;
  const counted = found.window;
  const [predictionsReading] = psiReading(found.psi.predictions, thresholds);
  const top = found.top_drifting.map((t) => `${t.feature} (${formatNumber(t.psi)})`).join(", ");
  const rows = element("dd", { id: "drift-rows", "data-rows": String(counted.rows), text: String(counted.rows) });
  const pairs = [
    ["Window since", counted.since ? `${counted.since} (the last routing change or server start)` : "not started: no rows yet"],
    ["Rows per worker", counted.rows_per_worker.length ? counted.rows_per_worker.join(", ") : null],
    ["Training rows of the reference", found.reference_rows],
    ["Predictions PSI", found.psi.predictions === null ? "none (no rows yet)" : `${formatNumber(found.psi.predictions)} (${predictionsReading})`],
    ["Most drifted", top || null],
  ];
  const list = document.getElementById("drift-window");
  list.replaceChildren(element("dt", { text: "Rows in the window" }), rows);
  for (const [name, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(element("dt", { text: name }), element("dd", { text: String(value) }));
  }
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
  result.hidden = false;
}

async function showComparison(left, right) {
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
  document.getElementById("comparison").hidden = false;
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
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    state.cards = {};
    loadModels();
  });
  document.getElementById("predict-form").addEventListener("submit", predict);
  document.getElementById("example-button").addEventListener("click", fillExample);
  document.getElementById("csv-form").addEventListener("submit", scoreCsv);
  document.getElementById("card-tag").addEventListener("change", showCard);
  document.getElementById("compare-tag").addEventListener("change", showCard);
  document.getElementById("drift-refresh").addEventListener("click", () => {
    const tag = document.getElementById("card-tag").value;
    if (tag) showDrift(tag);
  });
  loadModels();
});
