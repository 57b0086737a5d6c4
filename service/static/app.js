// medsearch search page: plain JavaScript, no build step. Talks to the JSON API; sends the
// API key (kept in sessionStorage) as a bearer token on every call, thumbnails included.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("medsearch-key") || "", thumbs: [], seq: 0, more: null };
const level = () => document.querySelector('input[name="level"]:checked').value;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function say(message, isError) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (e) { body = {}; }
    throw new Error(describe(response.status, body) || response.statusText);
  }
  return response;
}

// The API's errors are {error, detail}; detail is a string or a list of {loc, msg}.
function describe(status, body) {
  let detail = body.detail;
  if (Array.isArray(detail)) {
    detail = detail.map((d) => (d.loc ? d.loc.join(".") + ": " : "") + (d.msg || "")).join("; ");
  }
  let message = (body.error || "") + (typeof detail === "string" && detail ? ": " + detail : "");
  if (status === 401) {
    message += ". Enter a valid API key above.";
    $("api-key").focus();
    $("api-key").select();
  }
  return message;
}

function filters() {
  const list = (id) => $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
  const out = {};
  if (list("f-modality").length) out.modality = list("f-modality").map((s) => s.toUpperCase());
  if (list("f-body-part").length) out.body_part_examined = list("f-body-part").map((s) => s.toUpperCase());
  if ($("f-date-from").value) out.study_date_from = $("f-date-from").value;
  if ($("f-date-to").value) out.study_date_to = $("f-date-to").value;
  return Object.keys(out).length ? out : null;
}

// The min-score slider: at its left end (-1) there is no threshold.
function minScore() {
  const value = parseFloat($("f-min-score").value);
  return Number.isFinite(value) && value > -1 ? value : null;
}

function options(extra) {
  const out = Object.assign({ k: k(), filters: filters() }, extra || {});
  if (minScore() !== null) out.min_score = minScore();
  return out;
}

function k() {
  const value = parseInt($("f-k").value, 10);
  return Number.isFinite(value) ? Math.min(Math.max(value, 1), 100) : 12;
}

function shorten(uri) {
  const parts = uri.split("/");
  return parts.length > 3 ? "…/" + parts.slice(-2).join("/") : uri;
}

async function loadThumbnail(img, path) {
  const url = new URL(path, location.href);
  url.searchParams.set("size", "256");
  try {
    const response = await api(url.pathname + url.search);
    const blob = await response.blob();
    const objectUrl = URL.createObjectURL(blob);
    state.thumbs.push(objectUrl);
    img.src = objectUrl;
    // a placeholder (burned-in text policy): the reason in the card instead of the image
    const withheld = response.headers.get("X-Thumbnail-Withheld");
    if (withheld) {
      const note = document.createElement("p");
      note.className = "withheld";
      note.textContent = "No thumbnail: " + withheld;
      img.alt = note.textContent;
      img.hidden = true;
      img.after(note);
    }
  } catch (e) {
    img.alt = "no thumbnail";
  }
}

function show(results, what, append) {
  const grid = $("results");
  if (!append) {
    state.thumbs.forEach((u) => URL.revokeObjectURL(u));
    state.thumbs = [];
    grid.replaceChildren();
  }
  const template = $("card-template");
  for (const hit of results) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = String(hit.id);
    const m = hit.metadata || {};
    const img = card.querySelector("img");
    img.alt = "Thumbnail of item " + hit.id;
    loadThumbnail(img, hit.thumbnail_url);
    card.querySelector(".score").textContent = "score " + hit.score.toFixed(3);
    card.querySelector(".what").textContent = [m.modality, m.body_part_examined, m.study_date,
      m.series_description].filter(Boolean).join(" · ") || m.format;
    const source = card.querySelector(".source");
    source.textContent = shorten(hit.source_uri);
    source.title = hit.source_uri;
    const more = card.querySelector(".more");
    more.setAttribute("aria-label", "More like item " + hit.id);
    more.addEventListener("click", () => neighbours(hit.id));
    if (hit.viewer_url) {
      const link = card.querySelector(".viewer");
      link.href = hit.viewer_url;
      link.hidden = false;
    }
    grid.appendChild(card);
  }
  say(grid.children.length + " results " + what + ".");
}

// A series result: the best slice's thumbnail, the instance count, the viewer at the series.
function showSeries(results, what) {
  state.thumbs.forEach((u) => URL.revokeObjectURL(u));
  state.thumbs = [];
  const grid = $("results");
  grid.replaceChildren();
  const template = $("card-template");
  for (const hit of results) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.classList.add("series");
    card.dataset.series = hit.series_instance_uid;
    const img = card.querySelector("img");
    img.alt = "Best slice of series " + hit.series_instance_uid;
    if (hit.best_items.length) loadThumbnail(img, hit.best_items[0].thumbnail_url);
    card.querySelector(".score").textContent = "score " + hit.score.toFixed(3);
    card.querySelector(".what").textContent = [hit.modality, hit.body_part_examined,
      hit.series_description].filter(Boolean).join(" · ");
    const source = card.querySelector(".source");
    source.textContent = hit.instances + (hit.instances === 1 ? " image" : " images") + " in series";
    source.title = hit.series_instance_uid;
    const more = card.querySelector(".more");
    more.textContent = "Series like this";
    more.setAttribute("aria-label", "Series like " + hit.series_instance_uid);
    more.addEventListener("click", () => seriesLike(hit.series_instance_uid));
    if (hit.viewer_url) {
      const link = card.querySelector(".viewer");
      link.href = hit.viewer_url;
      link.hidden = false;
    }
    grid.appendChild(card);
  }
  say(results.length + " series " + what + ".");
}

// ``request(token)`` fetches a page; "Load more" asks for the next one with its token.
async function run(what, request, append) {
  const seq = ++state.seq;  // only the latest search may fill the grid
  say(append ? "Loading more…" : "Searching…");
  $("results").setAttribute("aria-busy", "true");
  $("load-more").hidden = true;
  try {
    const token = append && state.more ? state.more.token : null;
    const response = await request(token);
    const body = await response.json();
    if (seq !== state.seq) return;
    if (body.level === "series") showSeries(body.results, what);
    else show(body.results, what, append);
    state.more = body.next_page_token ? { what: what, request: request, token: body.next_page_token } : null;
    $("load-more").hidden = !state.more;
  } catch (e) {
    if (seq === state.seq) say(e.message, true);
  } finally {
    if (seq === state.seq) $("results").removeAttribute("aria-busy");
  }
}

function loadMore() {
  if (state.more) run(state.more.what, state.more.request, true);
}

const withToken = (body, token) => (token ? Object.assign({}, body, { page_token: token }) : body);

function postJson(path, body) {
  return api(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
}

function searchText(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  const body = options({ text: text });
  const path = level() === "series" ? "/v1/search/series" : "/v1/search/text";
  run("for “" + text + "”", (token) => postJson(path, withToken(body, token)));
}

function searchFiles(files) {
  if (!files || !files.length) return;
  const series = level() === "series";
  const chosen = series ? Array.from(files).slice(0, 64) : [files[0]];
  const what = chosen.length === 1 ? chosen[0].name : chosen.length + " slices";
  const path = series ? "/v1/search/series" : "/v1/search/image";
  const body = options();
  run("like " + what, (token) => {
    const form = new FormData();
    chosen.forEach((file) => form.append("file", file, file.name));
    form.append("options", JSON.stringify(withToken(body, token)));
    return api(path, { method: "POST", body: form });
  });
}

function neighbours(id) {
  const params = new URLSearchParams({ k: String(k()) });
  if (minScore() !== null) params.set("min_score", String(minScore()));
  run("like item " + id, (token) => {
    const query = new URLSearchParams(params);
    if (token) query.set("page_token", token);
    return api("/v1/items/" + id + "/neighbors?" + query.toString());
  });
}

function seriesLike(uid) {
  run("like series " + uid, () => postJson("/v1/search/series", options({ series_uid: uid })));
}

function setup() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem("medsearch-key", state.key);
    say(state.key ? "API key set for this tab." : "API key cleared.");
  });
  $("text-form").addEventListener("submit", searchText);
  $("load-more").addEventListener("click", loadMore);
  const slider = $("f-min-score");
  const showMin = () => { $("f-min-score-value").textContent = minScore() === null ? "off" : minScore().toFixed(2); };
  slider.addEventListener("input", showMin);
  showMin();
  const zone = $("drop-zone");
  zone.addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => searchFiles($("file").files));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    searchFiles(event.dataTransfer.files);
  });
}

setup();
