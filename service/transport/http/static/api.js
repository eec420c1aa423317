// The service's HTTP/JSON door: JSON calls, its error model, and a job's Server-Sent Events.
// Every URL is relative to the page, so the editor also works behind a path prefix.

const TOKEN_KEY = "sdedit.token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** A google.rpc.Status answer: code (HTTP), status (gRPC code name), message, field violations. */
export class ApiError extends Error {
  constructor(httpStatus, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.status = error.status || "";
    this.fields = [];
    for (const detail of error.details || []) {
      for (const violation of detail.fieldViolations || []) {
        this.fields.push({ field: violation.field, description: violation.description || "" });
      }
    }
  }
}

async function call(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (cause) {
    throw new ApiError(0, { error: { status: "UNAVAILABLE", message: `the service cannot be reached (${cause.message})` } });
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = { error: { message: text.slice(0, 300) } };
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

export const listModels = () => call("GET", "v1/models");
export const submitJob = (request) => call("POST", "v1/jobs", request);
export const getJob = (id) => call("GET", `v1/jobs/${encodeURIComponent(id)}`);
export const cancelJob = (id) => call("DELETE", `v1/jobs/${encodeURIComponent(id)}`);

/**
 * Follows a job's events until its `result` or `error` event, resuming after a dropped
 * connection from the last sequence seen. onEvent(type, data, sequence) gets each message;
 * data is the EditEvent JSON (or, for `error`, the error JSON). Returns a function that stops
 * following. EventSource cannot send an Authorization header, so with a token the stream is
 * read with fetch() and parsed here.
 */
export function followEvents(jobId, onEvent, onFailure) {
  const url = `v1/jobs/${encodeURIComponent(jobId)}/events`;
  const follow = getToken() ? followWithFetch : followWithEventSource;
  window.__sdeditStream = getToken() ? "fetch" : "EventSource";  // which reader followed (tests look)
  return follow(url, onEvent, onFailure);
}

const EVENT_TYPES = ["progress", "preview", "result", "error"];
const isFinal = (type) => type === "result" || type === "error";

function followWithEventSource(url, onEvent, onFailure) {
  const source = new EventSource(url);
  let finished = false;
  const stop = () => {
    finished = true;
    source.close();
  };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      if (!(message instanceof MessageEvent) || message.data === undefined) return;  // a connection error
      onEvent(type, JSON.parse(message.data), Number(message.lastEventId || 0));
      if (isFinal(type)) stop();
    });
  }
  source.onerror = () => {
    // EventSource reconnects on its own (sending Last-Event-ID) unless the server refused it
    if (!finished && source.readyState === EventSource.CLOSED) {
      finished = true;
      onFailure(new ApiError(0, { error: { message: "the event stream was refused" } }));
    }
  };
  return stop;
}

function followWithFetch(url, onEvent, onFailure) {
  const controller = new AbortController();
  let lastSequence = 0;
  let finished = false;
  const stop = () => {
    finished = true;
    controller.abort();
  };

  async function readOnce() {
    const response = await fetch(`${url}?afterSequence=${lastSequence}`, {
      headers: headers({ Accept: "text/event-stream" }), signal: controller.signal, cache: "no-store",
    });
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch { /* not JSON */ }
      throw new ApiError(response.status, body);
    }
    const parser = new SseParser((type, data, id) => {
      if (id) lastSequence = Number(id);
      if (!EVENT_TYPES.includes(type)) return;
      onEvent(type, JSON.parse(data), Number(id || 0));
      if (isFinal(type)) finished = true;
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    if (finished) controller.abort();
  }

  (async () => {
    for (let attempt = 0; !finished; attempt++) {
      const before = lastSequence;
      try {
        await readOnce();
        if (lastSequence > before) attempt = 0;  // it moved on: a fresh allowance of retries
        else if (attempt >= 5) throw new Error("the stream keeps ending without the job's end");
      } catch (error) {
        if (finished) return;
        if (error instanceof ApiError || attempt >= 5) {
          finished = true;
          onFailure(error instanceof ApiError ? error : new ApiError(0, { error: { message: `event stream: ${error.message}` } }));
          return;
        }
      }
      if (!finished) await new Promise((resolve) => setTimeout(resolve, 500));  // dropped: resume after lastSequence
    }
  })();
  return stop;
}

/** The text/event-stream format: fields up to a blank line make one message; ':' lines are comments. */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = "";
  }

  push(chunk) {
    this.buffer += chunk;
    const lines = this.buffer.split("\n");
    this.buffer = lines.pop();  // an unfinished line waits for the next chunk
    for (const line of lines) this.line(line.endsWith("\r") ? line.slice(0, -1) : line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onMessage(this.type || "message", this.data.join("\n"), this.id);
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
  }
}
