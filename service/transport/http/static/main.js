// The editor page: models, painting, the edit form, a job's progress and its results.
import { ApiError, cancelJob, followEvents, getJob, getToken, listModels, setToken, submitJob } from "./api.js";
import { Layers, parseColour, toBase64 } from "./layers.js";
import { Results } from "./results.js";

const $ = (id) => document.getElementById(id);
const DISPLAY_SIDE = 448;  // CSS pixels of the canvas's longer side (whole multiples of a model pixel)
const MAX_SEED = (1n << 64n) - 1n;

const layers = new Layers($("canvas"));
const results = new Results($("results"));
let models = [];
let painted = false;  // the canvas has been set up for a model once
let job = null;  // { id, stop, model } while one runs

// A debug hook for tests and the curious: every event of the latest job, in arrival order.
window.__sdeditEvents = [];

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === "submitting" || state === "running";
  $("submit").disabled = busy || !models.length;
  $("cancel").disabled = state !== "running";
}

function status(text) {
  $("status").textContent = text;
}

// --- errors ---------------------------------------------------------------------------------

function showError(error, context = "") {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  const code = error instanceof ApiError && (error.status || error.httpStatus) ? `${error.status || "HTTP"} ${error.httpStatus || ""}`.trim() : "Error";
  title.textContent = context ? `${context}: ${code}` : code;
  box.append(title, document.createTextNode(error.message));
  for (const { field, description } of error.fields || []) {
    const line = document.createElement("div");
    line.className = "field";
    const said = !description || error.message.includes(description);  // the service's message often says it already
    line.textContent = `field: ${field}${said ? "" : ` (${description})`}`;
    box.append(line);
  }
  if (error.httpStatus === 401) box.append(document.createTextNode("\nEnter a bearer token above."));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// --- models and the canvas size -------------------------------------------------------------

const currentModel = () => models.find((m) => m.name === $("model").value);

async function loadModels() {
  try {
    const answer = await listModels();
    models = (answer.models || []).map((m) => ({
      name: m.name, width: m.width || 0, height: m.height || 0, channels: m.channels || 1,
      defaultSteps: m.defaultSteps || 0, isDefault: !!m.isDefault, flexibleSize: !!m.flexibleSize,
      sizeMultiple: m.sizeMultiple || 1, maxWidth: m.maxWidth || m.width, maxHeight: m.maxHeight || m.height,
      description: m.description || "",
    }));
    const select = $("model");
    select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.width}×${m.height}, ${m.channels === 1 ? "grey" : "RGB"})`, m.name, m.isDefault, m.isDefault)));
    $("service-info").textContent = `${models.length} model${models.length === 1 ? "" : "s"}${answer.jobs ? ` · jobs: ${answer.jobs}` : ""}`;
    clearError();
    const model = currentModel();
    // a reload (a new token) keeps the painting when the size still fits
    modelChanged(!model || !painted || model.width !== layers.width || model.height !== layers.height);
    painted = true;
    setState("idle");
  } catch (error) {
    models = [];
    $("service-info").textContent = "no models";
    showError(error, "Listing models");
    setState("idle");
  }
}

function modelChanged(reset = true) {
  const model = currentModel();
  if (!model) return;
  if (reset) startBlank(model.width, model.height);
  const sizes = model.flexibleSize
    ? `; other sizes in multiples of ${model.sizeMultiple} up to ${model.maxWidth}×${model.maxHeight}`
    : "";
  const description = model.description ? `${model.description.replace(/[.\s]*$/, "")}. ` : "";
  $("model-info").textContent = `${description}Native size ${model.width}×${model.height}${sizes}; default steps ${model.defaultSteps || "?"}.`;
  $("steps").placeholder = String(model.defaultSteps || 0);
}

function startBlank(width, height) {
  const model = currentModel();
  layers.reset(width, height, model ? model.channels : 3);
  fitCanvas();
  describeCanvas();
}

function fitCanvas() {
  const scale = Math.max(1, Math.floor(DISPLAY_SIDE / Math.max(layers.width, layers.height)));
  $("canvas").style.width = `${layers.width * scale}px`;
  $("canvas").style.height = `${layers.height * scale}px`;
}

function describeCanvas() {
  const model = currentModel();
  let text = `Painting at ${layers.width}×${layers.height} pixels, the size that is sent (the service never resizes).`;
  if (model && model.channels === 1) text += " This model is greyscale: the guide and the brush colour are converted to grey, as the service would.";
  $("canvas-note").textContent = text;
}

/** A size the model takes as it is, or the reason it does not. */
function sizeProblem(model, width, height) {
  if (width === model.width && height === model.height) return null;
  const fits = model.flexibleSize && width % model.sizeMultiple === 0 && height % model.sizeMultiple === 0
    && width <= model.maxWidth && height <= model.maxHeight;
  if (fits) return null;
  const allowed = model.flexibleSize
    ? `${model.width}×${model.height} or sides in multiples of ${model.sizeMultiple} up to ${model.maxWidth}×${model.maxHeight}`
    : `${model.width}×${model.height}`;
  return `This guide is ${width}×${height}; model ${model.name} takes ${allowed}. The service never resizes images: resize it first, or use "Start blank".`;
}

async function uploadGuide(file) {
  const model = currentModel();
  if (!file || !model) return;
  clearError();
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch {
    showError(new Error(`${file.name} is not a PNG or JPEG image this browser can decode.`), "Upload");
    return;
  }
  const problem = sizeProblem(model, bitmap.width, bitmap.height);
  if (problem) {
    showError(new Error(problem), "Upload");
    return;
  }
  layers.reset(bitmap.width, bitmap.height, model.channels);
  layers.loadGuide(bitmap);
  fitCanvas();
  describeCanvas();
  status(`Guide ${file.name} loaded (${bitmap.width}×${bitmap.height}).`);
}

// --- painting -------------------------------------------------------------------------------

const radio = (name) => document.querySelector(`input[name="${name}"]:checked`).value;
const brushSize = () => Number($("brush-size").value);

function modelPoint(event) {
  const rect = $("canvas").getBoundingClientRect();
  return [((event.clientX - rect.left) * layers.width) / rect.width, ((event.clientY - rect.top) * layers.height) / rect.height];
}

function moveCursor(x, y) {
  const cursor = $("cursor");
  const scale = $("canvas").getBoundingClientRect().width / layers.width;
  const size = brushSize();
  cursor.hidden = false;
  cursor.style.left = `${Math.round(x - size / 2) * scale}px`;
  cursor.style.top = `${Math.round(y - size / 2) * scale}px`;
  cursor.style.width = cursor.style.height = `${size * scale}px`;
}

function setUpPainting() {
  const canvas = $("canvas");
  let last = null;
  const paint = (event) => {
    const [x, y] = modelPoint(event);
    moveCursor(x, y);
    if (!last) return;
    layers.stroke(radio("layer"), last[0], last[1], x, y, brushSize(), parseColour($("colour").value), radio("tool") === "eraser");
    last = [x, y];
  };
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    canvas.setPointerCapture(event.pointerId);
    last = modelPoint(event);
    paint(event);
  });
  canvas.addEventListener("pointermove", paint);
  const end = () => { last = null; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("pointerleave", () => { $("cursor").hidden = true; });

  for (const input of document.querySelectorAll('input[name="layer"]')) {
    input.addEventListener("change", () => {
      document.body.dataset.layer = radio("layer");
      if (radio("layer") === "mask" && !$("show-mask").checked) {
        $("show-mask").checked = true;
        layers.showMask = true;
        layers.render();
      }
    });
  }
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = `${brushSize()} px`; });
  $("show-mask").addEventListener("change", () => {
    layers.showMask = $("show-mask").checked;
    layers.render();
  });
  $("clear-mask").addEventListener("click", () => layers.clearMask());
  $("start-blank").addEventListener("click", () => {
    const model = currentModel();
    if (model) startBlank(model.width, model.height);
    $("guide-file").value = "";
  });
  $("guide-file").addEventListener("change", () => uploadGuide($("guide-file").files[0]));
}

// --- the edit -------------------------------------------------------------------------------

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.fields = [{ field, description: message }];
  }
}

function integerField(id, field, min, max) {
  const text = $(id).value.trim();
  if (text === "") return min;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) throw new FieldError(field, `must be a whole number from ${min} to ${max}`);
  return value;
}

async function buildRequest(model) {
  const steps = integerField("steps", "steps", 0, 100000);
  const numSamples = integerField("num-samples", "num_samples", 1, 64);
  const request = {
    model: model.name,
    image: toBase64(await layers.guidePng()),
    t0: Number($("t0").value),
    steps,
    sampler: $("sampler").value,
    numSamples,
    previewEvery: Math.max(1, Math.round((steps || model.defaultSteps || 20) / 10)),
  };
  if (!layers.maskIsEmpty()) request.mask = toBase64(await layers.maskPng());
  const seed = $("seed").value.trim();
  if (seed !== "") {
    if (!/^\d+$/.test(seed) || BigInt(seed) > MAX_SEED) throw new FieldError("seed", "must be blank (random) or a whole number from 0 to 2^64 - 1");
    request.seed = seed;  // uint64 travels as a string in proto3 JSON
  }
  return request;
}

function showProgress(progress) {
  if (!progress) return;
  const total = progress.totalNetworkCalls || 0;
  const done = progress.networkCalls || 0;
  $("progress").value = total ? done / total : 0;
  const repeat = (progress.repeats || 1) > 1 ? `repeat ${progress.repeat}/${progress.repeats}, ` : "";
  status(`Running: ${repeat}step ${progress.step || 0}/${progress.steps || "?"} · ${(progress.elapsedSeconds || 0).toFixed(1)} s`);
}

function finish(state, text) {
  if (job) job.stop();
  job = null;
  setState(state);
  status(text);
}

function onEvent(type, data, sequence) {
  const progress = type === "progress" ? data.progress : type === "preview" ? data.preview && data.preview.progress : null;
  window.__sdeditEvents.push({
    type, sequence, step: progress ? progress.step || 0 : null,
    networkCalls: progress ? progress.networkCalls || 0 : null, totalNetworkCalls: progress ? progress.totalNetworkCalls || 0 : null,
  });
  if (!job) return;
  if (type === "progress") showProgress(data.progress);
  else if (type === "preview") {
    showProgress(data.preview.progress);
    results.preview(data.preview.images || [], data.preview.progress || {});
  } else if (type === "result") showResult(data.result);
  else if (type === "error") {
    const error = new ApiError(data.error && data.error.code, data);
    const cancelled = error.status === "CANCELLED";
    results.abandon(cancelled ? "cancelled" : "failed");
    if (!cancelled) showError(error, "Edit failed");
    finish(cancelled ? "cancelled" : "failed", cancelled ? "Cancelled." : "The edit failed.");
  }
}

function showResult(result) {
  results.result(result.images || [], job.model);
  $("progress").value = 1;
  finish("succeeded", `Done: ${(result.images || []).length} image(s), ${result.networkCalls || 0} network calls${result.cached ? " (cached)" : ""}.`);
  if (result.timings && result.timings.totalSeconds) {
    const timing = document.createElement("span");
    timing.className = "timing";
    timing.textContent = ` ${result.timings.totalSeconds.toFixed(2)} s on the service.`;
    $("status").append(timing);
  }
}

/** The stream could not be followed: the job record tells how it ended, or the error stands. */
async function onStreamFailure(error) {
  if (!job) return;
  try {
    const record = await getJob(job.id);
    if (record.state === "JOB_STATE_SUCCEEDED" && record.result) return showResult(record.result);
    if (record.error) error = new ApiError(record.error.code, { error: record.error });
  } catch (lookup) {
    error = lookup;
  }
  showError(error, "Following the job");
  results.abandon("failed");
  finish("failed", "The job could not be followed.");
}

async function submit(event) {
  event.preventDefault();
  const model = currentModel();
  if (!model || job) return;
  clearError();
  setState("submitting");  // at once: the state never shows the previous job's end after a click
  window.__sdeditEvents = [];
  let request;
  try {
    request = await buildRequest(model);
  } catch (error) {
    showError(error, "Check the form");
    setState("idle");
    return;
  }
  window.__sdeditLastRequest = request;
  $("progress").value = 0;
  status("Submitting…");
  results.start($("canvas").toDataURL("image/png"), layers.width, layers.height, request.numSamples, !!request.mask && layers.showMask);
  try {
    const record = await submitJob(request);
    job = { id: record.id, model: model.name, stop: () => {} };
    document.body.dataset.job = record.id;
    setState("running");
    status(`Job ${record.id} queued…`);
    job.stop = followEvents(record.id, onEvent, onStreamFailure);
  } catch (error) {
    results.abandon("not submitted");
    showError(error, "Submitting");
    finish("failed", "The job was not accepted.");
  }
}

async function cancel() {
  if (!job) return;
  $("cancel").disabled = true;
  try {
    const record = await cancelJob(job.id);
    if (job && record.state === "JOB_STATE_CANCELLED") {
      results.abandon("cancelled");
      finish("cancelled", "Cancelled.");
    }
  } catch (error) {
    showError(error, "Cancelling");
    if (job) $("cancel").disabled = false;
  }
}

// --- start ----------------------------------------------------------------------------------

function setUpForm() {
  $("edit-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("model").addEventListener("change", () => modelChanged());
  $("t0").addEventListener("input", () => { $("t0-value").textContent = Number($("t0").value).toFixed(2); });
  $("token").value = getToken();
  $("token").addEventListener("change", () => {
    setToken($("token").value.trim());
    loadModels();
  });
}

document.body.dataset.layer = "guide";
setUpPainting();
setUpForm();
setState("loading");
loadModels();
