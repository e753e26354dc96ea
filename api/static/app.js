// The vdetect web page: uploads with progress, live job list (Server-Sent Events), result player.
// No framework and no build step; nothing is loaded from outside this server.

const $ = (selector) => document.querySelector(selector);
const jobs = new Map(); // event_id -> the latest status answer

// ---- the API key, asked once and exchanged for an HttpOnly session cookie -----------------------

let signingIn = null;
let sessions = 0; // sign-ins that succeeded on this page

function askKey() {
  signingIn ??= new Promise((resolve) => {
    const dialog = $("#key-dialog");
    $("#key-form").onsubmit = async (event) => {
      event.preventDefault();
      const answer = await fetch("/api/session", { method: "POST", headers: { "X-API-Key": $("#key").value } });
      if (answer.ok) {
        sessions += 1;
        dialog.close();
        signingIn = null;
        resolve();
      } else {
        $("#key-error").textContent = "That key was refused.";
      }
    };
    dialog.showModal();
  });
  return signingIn;
}

// A request refused for want of the key: the key is asked for, unless a sign-in has succeeded since
// the request was sent (an upload started while the key was being given): then it is simply sent again.
function signedIn(since) {
  return sessions !== since ? Promise.resolve() : askKey();
}

async function call(path, options = {}) {
  const since = sessions;
  let answer = await fetch(path, options);
  if (answer.status === 401) {
    await signedIn(since);
    answer = await fetch(path, options);
  }
  return answer;
}

// ---- uploads -------------------------------------------------------------------------------------

function upload(file) {
  const row = document.createElement("div");
  row.className = "upload";
  row.innerHTML = `<span></span><progress max="1" value="0"></progress><span class="state">uploading</span>`;
  row.firstChild.textContent = file.name;
  $("#uploads").append(row);
  const send = () => {
    const since = sessions;
    const request = new XMLHttpRequest();
    request.open("POST", "/api/upload_video");
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) row.querySelector("progress").value = event.loaded / event.total;
    };
    request.onload = async () => {
      if (request.status === 401) {
        await signedIn(since);
        send();
        return;
      }
      const answer = JSON.parse(request.responseText || "{}");
      if (request.status === 200) {
        row.querySelector(".state").textContent = "queued";
        update({ event_id: answer.event_id, file_name: file.name, status: "new", progress: 0,
                 processing_time_formatted: "0s" });
      } else {
        row.querySelector(".state").textContent = `refused: ${answer.detail ?? request.status}`;
        row.querySelector(".state").className = "state error";
      }
    };
    request.onerror = () => (row.querySelector(".state").textContent = "network error");
    const form = new FormData();
    form.append("file", file);
    if ($("#model").value) form.append("model", $("#model").value);
    request.send(form);
  };
  send();
}

const drop = $("#drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  [...event.dataTransfer.files].forEach(upload);
});
$("#file").addEventListener("change", (event) => {
  [...event.target.files].forEach(upload);
  event.target.value = ""; // the same file chosen again is a new upload
});

// ---- the job list, live ---------------------------------------------------------------------------

function eta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 60 ? `${Math.round(seconds)} s left` : `${Math.round(seconds / 60)} min left`;
}

function update(job) {
  jobs.set(job.event_id, { ...jobs.get(job.event_id), ...job });
  const data = jobs.get(job.event_id);
  let row = document.getElementById(`job-${data.event_id}`);
  if (!row) {
    row = document.createElement("tr");
    row.id = `job-${data.event_id}`;
    row.innerHTML = `<td><code></code></td><td class="file"></td><td class="status"></td><td><progress max="1"></progress>
      <span class="eta"></span></td><td class="time"></td><td><button type="button" hidden>view</button></td>`;
    row.querySelector("code").textContent = data.event_id.slice(0, 8);
    row.querySelector("button").onclick = () => openResult(data.event_id);
    $("#job-rows").prepend(row);
  }
  row.querySelector(".file").textContent = data.file_name ?? "";
  const status = row.querySelector(".status");
  status.textContent = data.status + (data.error ? `: ${data.error}` : "");
  status.className = `status status-${data.status}`;
  row.querySelector("progress").value = data.progress ?? 0;
  row.querySelector(".eta").textContent = data.status === "sent" ? eta(data.eta_seconds) : "";
  row.querySelector(".time").textContent = data.processing_time_formatted ?? "";
  row.querySelector("button").hidden = data.status !== "ready";
}

async function loadJobs() {
  let after = null;
  for (let page = 0; page < 5; page += 1) {
    const query = new URLSearchParams({ limit: "200", ...(after ? { after } : {}) });
    const answer = await call(`/api/status/all?${query}`);
    if (!answer.ok) return;
    const body = await answer.json();
    for (const op of body.operations) {
      update({ event_id: op.video_id, file_name: op.file_name, status: op.status_code, error: op.error, progress: op.progress,
               eta_seconds: op.eta_seconds, processing_time_formatted: op.processing_time_formatted });
    }
    if (!(after = body.next)) return;
  }
}

function followJobs() {
  const events = new EventSource("/api/jobs/events");
  events.addEventListener("status", (message) => update(JSON.parse(message.data)));
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) setTimeout(followJobs, 2000);
  };
}

// ---- the result: boxes over the playing video, class filter, chart, downloads ---------------------

const video = $("#video");
const boxes = $("#boxes");
let result = null; // {id, fps, tracked, frames: [frame numbers], byFrame: Map, classes: Map(name -> shown)}
let zones = []; // the zones drawn on the player: {name, line | polygon} in the video's pixels
let drawing = null; // {kind, points} while a zone is being drawn

function color(name) {
  let hash = 0;
  for (const char of String(name)) hash = (hash * 31 + char.charCodeAt(0)) % 360;
  return `hsl(${hash}, 85%, 50%)`;
}

function nearestFrame(frame) {
  const frames = result.frames;
  let low = 0, high = frames.length - 1;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (frames[middle] < frame) low = middle + 1; else high = middle;
  }
  if (low > 0 && Math.abs(frames[low - 1] - frame) <= Math.abs(frames[low] - frame)) low -= 1;
  return frames[low];
}

function draw() {
  if (!result || !video.videoWidth) return;
  boxes.width = video.clientWidth;
  boxes.height = video.clientHeight;
  const context = boxes.getContext("2d");
  context.clearRect(0, 0, boxes.width, boxes.height);
  if (!result.frames.length) return;
  const frame = nearestFrame(Math.round(video.currentTime * result.fps));
  const scaleX = boxes.width / video.videoWidth, scaleY = boxes.height / video.videoHeight;
  let drawn = 0;
  context.lineWidth = 2;
  context.font = "13px system-ui, sans-serif";
  for (const object of result.byFrame.get(frame).objects) {
    if (!result.classes.get(object.class)) continue;
    const [x1, y1, x2, y2] = object.box;
    const track = object.track_id !== undefined ? ` #${object.track_id}` : "";
    context.strokeStyle = context.fillStyle = color(object.track_id ?? object.class);
    context.strokeRect(x1 * scaleX, y1 * scaleY, (x2 - x1) * scaleX, (y2 - y1) * scaleY);
    context.fillText(`${object.class}${track} ${object.conf.toFixed(2)}`, x1 * scaleX + 2,
                     Math.max(12, y1 * scaleY - 3));
    drawn += 1;
  }
  drawZones(context, scaleX, scaleY);
  boxes.dataset.frame = frame;
  boxes.dataset.drawn = drawn;
  drawChart(frame);
}

function onEveryFrame() {
  draw();
  if (!video.paused && video.requestVideoFrameCallback) video.requestVideoFrameCallback(onEveryFrame);
}

function drawChart(current) {
  const chart = $("#chart");
  const context = chart.getContext("2d");
  const { frames, byFrame } = result;
  context.clearRect(0, 0, chart.width, chart.height);
  if (!frames.length) return;
  const shown = [...result.classes].filter(([, on]) => on).map(([name]) => name);
  const counts = new Map(shown.map((name) => [name, frames.map((f) => byFrame.get(f).objects
    .filter((o) => o.class === name).length)]));
  const top = Math.max(1, ...[...counts.values()].flat());
  const x = (i) => 30 + (i / Math.max(1, frames.length - 1)) * (chart.width - 40);
  const y = (n) => chart.height - 20 - (n / top) * (chart.height - 30);
  context.fillStyle = "#555";
  context.fillText(String(top), 4, y(top) + 4);
  context.fillText("0", 4, y(0) + 4);
  for (const [name, series] of counts) {
    context.strokeStyle = color(name);
    context.beginPath();
    series.forEach((n, i) => (i ? context.lineTo(x(i), y(n)) : context.moveTo(x(i), y(n))));
    context.stroke();
  }
  const index = frames.indexOf(current);
  if (index >= 0) {
    context.strokeStyle = "#000";
    context.beginPath();
    context.moveTo(x(index), 5);
    context.lineTo(x(index), chart.height - 20);
    context.stroke();
  }
}

// ---- zones: drawn on the player, counted by the API from the job's stored tracks ------------------

function drawZones(context, scaleX, scaleY) {
  const shapes = [...zones.map((zone) => zone.line ?? zone.polygon), ...(drawing ? [drawing.points] : [])];
  context.strokeStyle = "#ffc800";
  context.lineWidth = 3;
  shapes.forEach((points, i) => {
    context.beginPath();
    points.forEach(([x, y], j) => (j ? context.lineTo(x * scaleX, y * scaleY) : context.moveTo(x * scaleX, y * scaleY)));
    if (i < zones.length && zones[i].polygon) context.closePath();
    context.stroke();
  });
}

function startDrawing(kind) {
  if (!result || !result.tracked) {
    $("#zone-hint").textContent = "this job was not tracked: zones count tracks";
    return;
  }
  drawing = { kind, points: [] };
  boxes.classList.add("drawing");
  $("#finish-polygon").hidden = kind !== "polygon";
  $("#zone-hint").textContent = kind === "line" ? "click the line's two ends" : "click the corners, then finish";
  video.pause();
}

function videoPoint(event) {
  const rect = boxes.getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * video.videoWidth;
  const y = ((event.clientY - rect.top) / rect.height) * video.videoHeight;
  return [Math.round(Math.max(0, x)), Math.round(Math.max(0, y))];
}

function finishDrawing() {
  const { kind, points } = drawing;
  drawing = null;
  boxes.classList.remove("drawing");
  $("#finish-polygon").hidden = true;
  $("#zone-hint").textContent = "";
  if (points.length < (kind === "line" ? 2 : 3)) return draw();
  const name = `${kind} ${zones.length + 1}`;
  zones.push(kind === "line" ? { name, line: points } : { name, polygon: points });
  draw();
  countZones();
}

boxes.addEventListener("click", (event) => {
  if (!drawing) return;
  drawing.points.push(videoPoint(event));
  if (drawing.kind === "line" && drawing.points.length === 2) finishDrawing();
  else draw();
});
$("#draw-line").onclick = () => startDrawing("line");
$("#draw-polygon").onclick = () => startDrawing("polygon");
$("#finish-polygon").onclick = () => finishDrawing();
$("#clear-zones").onclick = () => {
  zones = [];
  $("#zone-counts tbody").replaceChildren();
  draw();
};

async function countZones() {
  const body = $("#zone-counts tbody");
  body.dataset.state = "counting";
  const answer = await call(`/api/jobs/${result.id}/zones`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ zones }) });
  const counted = await answer.json();
  body.replaceChildren();
  if (!answer.ok) {
    body.dataset.state = "refused";
    $("#zone-hint").textContent = `refused: ${typeof counted.detail === "string" ? counted.detail : answer.status}`;
    return;
  }
  for (const [name, zone] of Object.entries(counted.zones)) {
    const classes = Object.entries(zone.counts);
    if (!classes.length) classes.push(["(none)", {}]);
    for (const [cls, counts] of classes) {
      const row = document.createElement("tr");
      row.innerHTML = "<td></td><td></td><td></td>";
      row.dataset.zone = name;
      row.dataset.class = cls;
      row.dataset.counts = JSON.stringify(counts);
      row.children[0].textContent = name;
      row.children[1].textContent = cls;
      row.children[2].textContent = Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ");
      body.append(row);
    }
  }
  body.dataset.zones = JSON.stringify(zones);
  body.dataset.state = "counted";
}

// ---- the summary: distinct objects per class, not boxes -------------------------------------------

function showSummary(summary) {
  const body = $("#summary tbody");
  body.replaceChildren();
  for (const [name, entry] of Object.entries(summary?.classes ?? {})) {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td><td></td>";
    row.children[0].textContent = name;
    row.children[1].textContent = entry.tracks;
    row.children[2].textContent = entry.max_at_once;
    row.children[3].textContent = `${entry.first_s.toFixed(1)} s to ${entry.last_s.toFixed(1)} s`;
    body.append(row);
  }
}

// ---- the annotated video, made by the render workers on request ------------------------------------

async function showRender(state) {
  const annotated = $("#annotated");
  $("#render-state").textContent = state.status === "failed" ? `failed: ${state.error}` : state.status;
  $("#render").hidden = state.status === "ready" || state.status === "rendering";
  annotated.hidden = $("#play-annotated").hidden = state.status !== "ready";
  if (state.status === "ready") {
    annotated.href = state.url;
    annotated.download = `${state.event_id}-annotated.mp4`;
  }
  if (state.status === "rendering") {
    setTimeout(async () => {
      if (result?.id !== state.event_id) return;
      showRender(await (await call(`/api/jobs/${state.event_id}/render`)).json());
    }, 2000);
  }
}

$("#render").onclick = async () => showRender(await (await call(`/api/jobs/${result.id}/render`, { method: "POST" })).json());
$("#play-annotated").onclick = () => {
  video.src = $("#annotated").href;
  result.classes.forEach((_, name) => result.classes.set(name, false)); // the video has its own boxes
  draw();
  video.play();
};

async function openResult(id) {
  const answer = await call(`/api/result_video/${id}`);
  const body = await answer.json();
  if (body.status !== "ready") return;
  const byFrame = new Map(body.prediction.map((frame) => [frame.frame, frame]));
  const names = [...new Set(body.prediction.flatMap((frame) => frame.objects.map((o) => o.class)))].sort();
  result = { id, fps: body.fps || 30, tracked: body.summary !== undefined,
             frames: [...byFrame.keys()].sort((a, b) => a - b), byFrame, classes: new Map(names.map((name) => [name, true])) };
  zones = [];
  $("#zone-counts tbody").replaceChildren();
  showSummary(body.summary);
  showRender(await (await call(`/api/jobs/${id}/render`)).json());
  $("#result").hidden = false;
  $("#result-id").textContent = id.slice(0, 8);
  const legend = $("#classes");
  legend.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "classes" }));
  for (const name of names) {
    const label = document.createElement("label");
    const total = body.prediction.reduce((n, f) => n + f.objects.filter((o) => o.class === name).length, 0);
    label.innerHTML = `<input type="checkbox" checked> <span></span>`;
    const objects = body.summary?.classes?.[name]?.tracks;
    label.querySelector("span").textContent = objects !== undefined ? `${name} (${objects} objects, ${total} boxes)`
      : `${name} (${total} boxes)`;
    label.querySelector("span").style.color = color(name);
    label.querySelector("input").onchange = (event) => {
      result.classes.set(name, event.target.checked);
      draw();
    };
    legend.append(label);
  }
  $("#json").href = `/api/result_video/${id}`;
  $("#json").download = `${id}.json`;
  for (const [format, suffix] of [["csv", "csv"], ["mot", "txt"], ["coco", "coco.json"]]) {
    $(`#${format}`).href = `/api/result_video/${id}?format=${format}`;
    $(`#${format}`).download = `${id}.${suffix}`;
  }
  video.src = `/api/video/${id}`;
}

video.addEventListener("loadeddata", draw);
video.addEventListener("seeked", draw);
video.addEventListener("timeupdate", draw);
video.addEventListener("play", onEveryFrame);
window.addEventListener("resize", draw);
$("#close").onclick = () => {
  $("#result").hidden = true;
  video.removeAttribute("src");
  result = null;
};

// ---- models: the upload's model is chosen from GET /api/models (the default first selected) -------

async function loadModels() {
  const answer = await call("/api/models");
  if (!answer.ok) return;
  const select = $("#model");
  select.replaceChildren();
  for (const model of (await answer.json()).models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.classes.length} classes)`;
    option.selected = model.default;
    select.append(option);
  }
}

loadModels().then(loadJobs).then(followJobs);
