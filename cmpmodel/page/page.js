// The page of `cmpmodel serve`: pointer events on the picture become guides (drag: an
// arrow, click: a static point) or annotation clicks; after each change the server
// propagates them and the result is shown. Coordinates sent are the picture's pixels.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// An arrow: a dark outline under a yellow line, each with its own head marker (head-WIDTH).
const STROKES = [["#000", 4], ["#ffe000", 2]];
const CLICK_PX = 4; // a press that moves less than this (picture px) is a click, not a drag
const PICK_PX = 12; // a right-click removes the nearest mark within this distance

const $ = (id) => document.getElementById(id);
const state = {
  image: null, // {id, name, width, height}
  guides: [], // [x, y, dx, dy]
  positive: [], // [x, y]
  negative: [],
  history: [], // "guides" | "positive" | "negative": where each mark went, for undo
  drag: null,
  request: 0, // the latest request's number: older replies are dropped
  info: null,
};

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function clickKind(event) {
  const chosen = document.querySelector("input[name=kind]:checked").value;
  // Shift inverts the chosen kind: a quick negative click without leaving the picture.
  if (!event.shiftKey) return chosen;
  return chosen === "positive" ? "negative" : "positive";
}

function say(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

function finished() {
  document.body.dataset.busy = "0";
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
}

async function call(url, options) {
  const reply = await fetch(url, options);
  let body;
  try {
    body = await reply.json();
  } catch (error) {
    throw new Error(`the server answered ${reply.status} ${reply.statusText}`);
  }
  if (!reply.ok) throw new Error(body.error || `the server answered ${reply.status}`);
  return body;
}

function post(url, payload) {
  return call(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
}

function position(event) {
  const box = $("picture").getBoundingClientRect();
  const x = ((event.clientX - box.left) * state.image.width) / box.width;
  const y = ((event.clientY - box.top) * state.image.height) / box.height;
  return [
    Math.min(Math.max(x, 0), state.image.width - 1),
    Math.min(Math.max(y, 0), state.image.height - 1),
  ];
}

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function arrow(svg, x, y, dx, dy) {
  // A dark outline under a yellow line reads on bright and dark pictures alike.
  for (const [colour, width] of STROKES) {
    svg.appendChild(element("line", {
      x1: x, y1: y, x2: x + dx, y2: y + dy, stroke: colour, "stroke-width": width,
      "marker-end": `url(#head-${width})`, "stroke-linecap": "round",
    }));
  }
}

function marker(svg, x, y, kind) {
  const colours = { still: "#ffe000", positive: "#00d000", negative: "#ff2020" };
  svg.appendChild(element("circle", {
    cx: x, cy: y, r: 4, fill: colours[kind], stroke: "#000", "stroke-width": 1.5,
    class: `mark ${kind}`,
  }));
}

function heads(svg) {
  const defs = element("defs", {});
  for (const [colour, width] of STROKES) {
    const head = element("marker", {
      id: `head-${width}`, viewBox: "0 0 10 10", refX: 6, refY: 5, orient: "auto",
      markerWidth: 4, markerHeight: 4, markerUnits: "strokeWidth",
    });
    head.appendChild(element("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }));
    defs.appendChild(head);
  }
  svg.appendChild(defs);
}

function draw() {
  for (const svg of [$("overlay"), $("result-overlay")]) {
    svg.replaceChildren();
    if (!state.image) continue;
    svg.setAttribute("viewBox", `0 0 ${state.image.width} ${state.image.height}`);
    heads(svg);
    if (mode() === "flow") {
      for (const [x, y, dx, dy] of state.guides) {
        if (dx === 0 && dy === 0) marker(svg, x, y, "still");
        else arrow(svg, x, y, dx, dy);
      }
    } else {
      for (const [x, y] of state.positive) marker(svg, x, y, "positive");
      for (const [x, y] of state.negative) marker(svg, x, y, "negative");
    }
    if (state.drag && svg === $("overlay")) {
      const [x, y] = state.drag.start;
      const [x2, y2] = state.drag.now;
      arrow(svg, x, y, x2 - x, y2 - y);
    }
  }
}

function clearResult(caption) {
  $("result").removeAttribute("src");
  $("side").removeAttribute("src");
  $("result-caption").textContent = caption || "";
  $("side-caption").textContent = "";
  $("save").classList.add("disabled");
  $("save").removeAttribute("href");
}

async function update() {
  draw();
  const number = ++state.request;
  const request = pending();
  if (!request) {
    finished();
    return;
  }
  document.body.dataset.busy = "1";
  try {
    const reply = await post(...request);
    if (number !== state.request) return;
    show(reply);
    say("");
  } catch (error) {
    if (number !== state.request) return;
    clearResult("");
    say(error.message, true);
  }
  finished();
}

// The request the marks call for, as [url, payload]; null (the result cleared) when there
// is nothing to propagate yet.
function pending() {
  if (!state.image) return null;
  const method = $("method").value;
  if (mode() === "flow") {
    if (!state.guides.length) {
      clearResult("drag on the picture to place a guide arrow");
      return null;
    }
    return ["/api/flow", { image: state.image.id, method, guides: state.guides }];
  }
  if (!state.positive.length) {
    clearResult("click on an object");
    return null;
  }
  const payload = {
    image: state.image.id, method, positive: state.positive, negative: state.negative,
  };
  return ["/api/mask", payload];
}

function show(reply) {
  if (mode() === "flow") {
    $("result").src = reply.flow;
    $("result-caption").textContent =
      `propagated flow from ${state.guides.length} guide(s), max ${reply.max_magnitude.toFixed(1)} px`;
    $("side").src = reply.legend;
    $("side-caption").textContent = "direction (colour legend)";
  } else {
    $("result").src = reply.overlay;
    $("result-caption").textContent =
      `mask: ${(100 * reply.coverage).toFixed(1)} % of the picture ` +
      `(${state.positive.length} on, ${state.negative.length} off)`;
    $("side").src = reply.response;
    $("side-caption").textContent =
      `response (mask above ${state.info.threshold} of its largest)`;
    const name = state.image.name.replace(/\.[^.]*$/, "").replace(/[^\w-]+/g, "_");
    $("save").href = reply.mask;
    $("save").download = `${name || "picture"}-mask.png`;
    $("save").classList.remove("disabled");
  }
}

function reset() {
  state.guides = [];
  state.positive = [];
  state.negative = [];
  state.history = [];
}

async function useImage(reply) {
  state.image = reply;
  reset();
  $("picture").src = `/api/image/${reply.id}`;
  $("picture").width = reply.width;
  $("picture").height = reply.height;
  $("result").width = reply.width;
  $("result").height = reply.height;
  $("picture-caption").textContent =
    `${reply.name}, ${reply.width} x ${reply.height} px: ` +
    "drag for an arrow, click for a point, right-click removes";
  say(reply.message || "");
  await update();
}

async function load(work) {
  document.body.dataset.busy = "1";
  try {
    await useImage(await work());
  } catch (error) {
    say(error.message, true);
  }
  finished();
}

function remove(x, y) {
  const lists = mode() === "flow" ? ["guides"] : ["positive", "negative"];
  let best = null;
  for (const name of lists) {
    state[name].forEach(([px, py], index) => {
      const distance = Math.hypot(px - x, py - y);
      if (distance <= PICK_PX && (!best || distance < best.distance)) {
        best = { name, index, distance };
      }
    });
  }
  if (!best) return false;
  state[best.name].splice(best.index, 1);
  const at = state.history.lastIndexOf(best.name);
  if (at >= 0) state.history.splice(at, 1);
  return true;
}

function onPointerDown(event) {
  if (!state.image || event.button !== 0) return;
  event.preventDefault();
  $("overlay").setPointerCapture(event.pointerId);
  const start = position(event);
  state.drag = { start, now: start };
}

function onPointerMove(event) {
  if (!state.drag) return;
  state.drag.now = position(event);
  if (mode() === "flow") draw();
}

function onPointerUp(event) {
  if (!state.drag) return;
  const [x, y] = state.drag.start;
  const [x2, y2] = position(event);
  state.drag = null;
  const moved = Math.hypot(x2 - x, y2 - y) >= CLICK_PX;
  const round = (value) => Math.round(value * 10) / 10;
  if (mode() === "flow") {
    state.guides.push(moved ? [x, y, round(x2 - x), round(y2 - y)] : [x, y, 0, 0]);
    state.history.push("guides");
  } else {
    const kind = clickKind(event);
    state[kind].push([x, y]);
    state.history.push(kind);
  }
  update();
}

function onContextMenu(event) {
  event.preventDefault();
  if (!state.image) return;
  const [x, y] = position(event);
  if (remove(x, y)) update();
}

async function start() {
  try {
    state.info = await call("/api/info");
  } catch (error) {
    say(error.message, true);
    return;
  }
  const info = state.info;
  for (const { id, label } of info.methods) $("method").add(new Option(label, id));
  $("device").textContent = `runs on ${info.device}; pictures resized to ${info.max_side} px a side`;
  if (info.samples > 0) {
    $("sample-box").hidden = false;
    $("sample").add(new Option("choose", ""));
    for (let i = 0; i < Math.min(info.samples, 1000); i++) $("sample").add(new Option(`#${i}`, i));
  }
  $("help").textContent =
    "Guide arrows: drag on the picture for a guide (its motion), click for a still point. " +
    `Annotate: click on an object (shift-click: not on it); each positive click is given a ` +
    `test motion of ${info.speed} px and the mask is where the propagated motion exceeds ` +
    `${info.threshold} of its largest. Right-click removes the nearest mark.`;
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    $("file").value = ""; // choosing the same file again is a change too
    load(() => call("/api/image", { method: "POST", body: form }));
  });
  $("sample").addEventListener("change", () => {
    if ($("sample").value === "") return;
    load(() => post("/api/sample", { index: Number($("sample").value) }));
  });
  $("method").addEventListener("change", update);
  for (const input of document.querySelectorAll("input[name=mode]")) {
    input.addEventListener("change", () => {
      $("click-kind").hidden = mode() !== "mask";
      clearResult("");
      update();
    });
  }
  $("undo").addEventListener("click", () => {
    const name = state.history.pop();
    if (name) {
      state[name].pop();
      update();
    }
  });
  $("clear").addEventListener("click", () => {
    reset();
    update();
  });
  const overlay = $("overlay");
  overlay.addEventListener("pointerdown", onPointerDown);
  overlay.addEventListener("pointermove", onPointerMove);
  overlay.addEventListener("pointerup", onPointerUp);
  overlay.addEventListener("contextmenu", onContextMenu);
  document.body.dataset.ready = "1";
}

start();
