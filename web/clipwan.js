// comfyui-clipwan front-end extension (plain ES module, loaded by ComfyUI from WEB_DIRECTORY; no build).
//
// - CausalWanSampler: shows the frames generated so far while sampling (the `clipwan.causal_frames`
//   websocket event, one per finished block) and offers presets for the known causal models in the
//   node's context menu (right click → "ClipWan presets"); picking a family in its `family` combo fills
//   the widgets the same way.
// - CausalWanStreamVideo: a prompt box under the player sends a new prompt to the running stream (live prompts).
// - ExportCLIPToAxmodel / CLIPZeroShotAxera: show their report (export summary, label scores) on the node.
//
// Everything added here is display only (never serialized), so workflows saved with or without this
// extension are identical.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  FAMILY_WIDGET, LAYOUTS_PATH, PRESETS_PATH, SCORE_COLORS, SCORE_LABELS, applyLength, applyPreset, decodeFramePayload,
  familyChosen, framePrompt, hiddenKnobs, liveImageRequest, liveLoraRequest, livePromptRequest, markAdvanced,
  mergeScores, migrateWidgetValues,
  presetDetails, presetLabel, reportText, restoreByName, savedVideo, scoreCaption, scoreChart,
} from "./clipwan_logic.js";

const EXTENSION = "clipwan.ui";
const SAMPLER = "CausalWanSampler";
// Nodes whose live frames the player shows: the sampler (previews, or tiny-decoder frames) and
// Causal Wan Stream Video (decoded frames, plus a status line when a run is stopped).
const STREAM = "CausalWanStreamVideo";
const PLAYERS = [SAMPLER, STREAM];
// Nodes that take live prompts while they run (a text box + Send under the player; needs a timeline input).
const LIVE = [STREAM];
// Nodes that return their report as ui.text: shown on the node.
const REPORTERS = ["ExportCLIPToAxmodel", "CLIPZeroShotAxera"];
const MAX_PLAYER_FRAMES = 240; // ~30 s of preview at 8 fps
const PLAYER_MIN_HEIGHT = 120;
const PLAYER_MAX_HEIGHT = 360;
const CHART_HEIGHT = 90; // the live CLIP-score chart under the player (only once scores arrive)
const SVG_NS = "http://www.w3.org/2000/svg";
let causalPresets = {}; // filled from the pack's Python preset table at setup
let widgetLayouts = {}; // {node type: {layouts, defaults}}: how earlier versions saved the causal nodes' widgets

async function fetchJson(path) {
  try {
    const response = await api.fetchApi(path);
    if (response.ok) return await response.json();
    console.warn(`[clipwan] ${path}: HTTP ${response.status}`);
  } catch (error) {
    console.warn(`[clipwan] could not load ${path}`, error);
  }
  return {};
}

async function loadPresets() {
  [causalPresets, widgetLayouts] = await Promise.all([fetchJson(PRESETS_PATH), fetchJson(LAYOUTS_PATH)]);
}

function findNode(nodeId) {
  // `node` in the event is ComfyUI's unique id: a plain number, or "a:b" inside a subgraph.
  const graph = app.graph;
  if (!graph) return null;
  const last = String(nodeId).split(":").pop();
  return graph.getNodeById?.(Number(last)) ?? graph.getNodeById?.(last) ?? null;
}

function addDisplayWidget(node, name, element, height) {
  if (typeof node.addDOMWidget !== "function") return null;
  const minHeight = typeof height === "function" ? height : () => height;
  const widget = node.addDOMWidget(name, "clipwan_display", element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: minHeight,
    ...(typeof height === "function" ? { getMaxHeight: minHeight } : {}),
  });
  widget.serialize = false; // keep widgets_values identical with and without this extension
  return widget;
}

// ------------------------------------------------------------------------------------------------
// Causal sampler: live frame strip
// ------------------------------------------------------------------------------------------------
function framePanel(node) {
  if (node.__clipwanFrames) return node.__clipwanFrames;
  const root = document.createElement("div");
  root.className = "clipwan-frames";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;font:11px sans-serif;color:#ccc;";
  const label = document.createElement("div");
  label.textContent = "frames appear here as each block finishes";
  const img = document.createElement("img");
  img.style.cssText = "width:100%;height:calc(100% - 18px);object-fit:contain;image-rendering:auto;background:#111;";
  const chart = document.createElement("div"); // live CLIP scores (Causal Wan Stream Video with score_clip)
  chart.style.cssText = `display:none;height:${CHART_HEIGHT}px;flex:none;`;
  root.append(label, img, chart);
  const panel = { root, label, img, chart, frames: [], timer: null, index: 0, height: PLAYER_MIN_HEIGHT, scores: null };
  panel.widget = addDisplayWidget(node, "clipwan_frames", root,
    () => panel.height + (panel.scores ? CHART_HEIGHT + 4 : 0));
  // Size the player to the video's aspect ratio at the node's width (capped), once the first frame is in.
  img.addEventListener("load", () => {
    if (!img.naturalWidth) return;
    const width = Math.max(120, (node.size?.[0] ?? 300) - 20);
    const height = Math.round(Math.min(PLAYER_MAX_HEIGHT, Math.max(PLAYER_MIN_HEIGHT,
      width * img.naturalHeight / img.naturalWidth + 22)));
    if (height !== panel.height) {
      panel.height = height;
      const wanted = node.computeSize?.();
      if (wanted && node.size && wanted[1] > node.size[1]) node.setSize?.([node.size[0], wanted[1]]);
      node.setDirtyCanvas?.(true, true);
    }
  });
  node.__clipwanFrames = panel;
  return panel;
}

function showFrames(node, payload) {
  if (payload?.status) {
    framePanel(node).label.textContent = payload.status; // e.g. "Stopped after 57 frames: ... saved to ..."
    node.setDirtyCanvas?.(true, true);
    return;
  }
  const { urls, block, totalBlocks } = decodeFramePayload(payload);
  const prompt = framePrompt(payload);
  if (payload?.node != null) node.__clipwanUniqueId = payload.node; // the id the live route knows (subgraphs: "a:b")
  if (!urls.length) return;
  const panel = framePanel(node);
  showLive(panel);
  if (payload.scores || (payload.frame_start === 0 && panel.scores)) showScores(node, panel, payload);
  // A new run starts over: its first frames (frame_start 0), or an earlier block than the last one seen.
  // (Causal Wan Stream Video sends several pieces per block, so block 0 alone is not a new run.)
  const start = payload.frame_start ?? (block === 0 ? 0 : null);
  if (start === 0 || block < (panel.lastBlock ?? -1)) {
    panel.frames = []; // a new run starts over
    panel.total = 0;
  }
  panel.lastBlock = block;
  panel.frames.push(...urls);
  panel.total = (panel.total ?? 0) + urls.length;
  // Unbounded-length sampling can stream thousands of frames: the player keeps the most recent ones only.
  if (panel.frames.length > MAX_PLAYER_FRAMES) panel.frames.splice(0, panel.frames.length - MAX_PLAYER_FRAMES);
  // an endless stream (until_stopped) has no last block: total_blocks is 0
  panel.label.textContent = (totalBlocks
    ? `block ${block + 1} / ${totalBlocks} · ${panel.total} frames`
    : `block ${block + 1} (until stopped) · ${panel.total} frames`) + (prompt ? ` · ${prompt}` : "");
  // Play the frames so far as a loop. This player is the sampler's only preview: inside ComfyUI the node
  // sends its progress without preview images (see nodes/wan_nodes.py), so no second picture stacks up.
  if (panel.timer) clearInterval(panel.timer);
  panel.index = Math.max(0, panel.frames.length - urls.length);
  panel.timer = setInterval(() => {
    if (!panel.frames.length) return;
    panel.img.src = panel.frames[panel.index % panel.frames.length];
    panel.index += 1;
  }, 1000 / 8);
  if (!panel.widget) {
    // Older front ends without DOM widgets: fall back to the node's image preview.
    node.imgs = urls.map((u) => Object.assign(new Image(), { src: u }));
  }
  node.setDirtyCanvas?.(true, true);
}

// The stream node's saved file plays in the same panel once the run is done (nodes/stream_nodes.py sends it
// under its own key, not ComfyUI's "images", so no second player appears under this one).
function showSavedVideo(node, video) {
  const panel = framePanel(node);
  if (panel.timer) clearInterval(panel.timer);
  panel.timer = null;
  if (!panel.video) {
    panel.video = Object.assign(document.createElement("video"), { controls: true, loop: true, muted: true,
      autoplay: true, playsInline: true });
    panel.video.style.cssText = panel.img.style.cssText;
    panel.root.append(panel.video);
  }
  panel.video.src = api.apiURL(video.path);
  panel.video.type = video.mime;
  panel.img.style.display = "none";
  panel.video.style.display = "";
  panel.label.textContent = `saved ${video.filename}`;
  node.setDirtyCanvas?.(true, true);
}

function showLive(panel) {
  if (!panel.video) return;
  panel.video.pause?.();
  panel.video.style.display = "none";
  panel.img.style.display = "";
}

// Live CLIP-score chart: a line per score (the PNG chart's colours), dashed markers at prompt switches.
function showScores(node, panel, payload) {
  const had = Boolean(panel.scores);
  panel.scores = payload.scores ? mergeScores(panel.scores, payload) : null; // a run without scores hides it
  const chart = panel.chart;
  chart.style.display = panel.scores ? "block" : "none";
  panel.img.style.height = `calc(100% - ${18 + (panel.scores ? CHART_HEIGHT + 4 : 0)}px)`;
  if (!panel.scores) return;
  const width = Math.max(120, chart.clientWidth || (node.size?.[0] ?? 300) - 20);
  const plotHeight = CHART_HEIGHT - 16;
  const geometry = scoreChart(panel.scores, width, plotHeight);
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", plotHeight);
  svg.style.cssText = "display:block;background:rgba(127,127,127,0.12);border-radius:3px;";
  for (const sw of geometry.switches) {
    const line = document.createElementNS(SVG_NS, "line");
    Object.entries({ x1: sw.x, x2: sw.x, y1: 0, y2: plotHeight, stroke: "#999", "stroke-dasharray": "3,3" })
      .forEach(([k, v]) => line.setAttribute(k, v));
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `frame ${sw.frame}: ${sw.prompt}`;
    line.append(title);
    svg.append(line);
  }
  for (const [name, d] of Object.entries(geometry.paths)) {
    const path = document.createElementNS(SVG_NS, "path");
    Object.entries({ d, fill: "none", stroke: SCORE_COLORS[name], "stroke-width": 1.5 })
      .forEach(([k, v]) => path.setAttribute(k, v));
    svg.append(path);
  }
  const caption = document.createElement("div");
  caption.style.cssText = "height:14px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
  const range = geometry.range ? ` (${geometry.range[0].toFixed(0)}–${geometry.range[1].toFixed(0)})` : "";
  caption.innerHTML = Object.keys(SCORE_COLORS).map((n) =>
    `<span style="color:${SCORE_COLORS[n]}">■</span> ${SCORE_LABELS[n]}`).join(" ") +
    ` · ${scoreCaption(panel.scores)}${range}`;
  chart.replaceChildren(caption, svg);
  if (!had) { // make room for the chart once
    const wanted = node.computeSize?.();
    if (wanted && node.size && wanted[1] > node.size[1]) node.setSize?.([node.size[0], wanted[1]]);
  }
}

// Live prompt box: type a prompt while the stream runs, Send -> POST /clipwan/live/<node id>/prompt; it takes
// over at the next block (the player's label then says "prompt N from block B").
function livePromptBox(node) {
  if (node.__clipwanLive) return;
  const root = document.createElement("div");
  root.style.cssText = "display:flex;gap:4px;align-items:center;font:11px sans-serif;color:#ccc;";
  const input = document.createElement("input");
  input.type = "text";
  input.placeholder = "new prompt while it plays (needs a timeline input)";
  input.style.cssText = "flex:1;min-width:0;background:#222;color:#ddd;border:1px solid #444;padding:2px 4px;";
  const blend = document.createElement("input");
  blend.type = "number";
  blend.min = "0";
  blend.value = "0";
  blend.title = "blend over this many blocks (0 = switch with the family's rule)";
  blend.style.cssText = "width:3.5em;background:#222;color:#ddd;border:1px solid #444;";
  const send = document.createElement("button");
  send.textContent = "Send";
  const status = document.createElement("span");
  const submit = async () => {
    const request = livePromptRequest(node.__clipwanUniqueId ?? node.id, input.value, blend.value);
    if (!request) return;
    try {
      const response = await api.fetchApi(request.path, { method: "POST", body: request.body,
                                                          headers: { "Content-Type": "application/json" } });
      const answer = await response.json();
      status.textContent = response.ok ? `sent (#${answer.id})` : (answer.error ?? `HTTP ${response.status}`);
      if (response.ok) input.value = "";
    } catch (error) {
      status.textContent = String(error);
    }
  };
  send.addEventListener("click", submit);
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") submit(); });
  root.append(input, blend, send, ...liveImageAndLora(node, root, blend, status), status);
  node.__clipwanLive = { root, widget: addDisplayWidget(node, "clipwan_live_prompt", root, 28) };
}

// Live image (a file picker, or an image dropped on the box) and LoRA strength, beside the prompt box: POST
// /clipwan/live/<node id>/image | /lora; each takes over at the next block ("image from block B: name").
function liveImageAndLora(node, root, blend, status) {
  const post = async (request) => {
    if (!request) return;
    try {
      const response = await api.fetchApi(request.path, { method: "POST", body: request.body,
                                                          headers: { "Content-Type": "application/json" } });
      const answer = await response.json();
      status.textContent = response.ok ? `sent (#${answer.id})` : (answer.error ?? `HTTP ${response.status}`);
    } catch (error) {
      status.textContent = String(error);
    }
  };
  const id = () => node.__clipwanUniqueId ?? node.id;
  const sendFile = (file) => {
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => post(liveImageRequest(id(), reader.result, file.name, blend.value));
    reader.readAsDataURL(file);
  };
  const picker = document.createElement("input");
  picker.type = "file";
  picker.accept = "image/png,image/jpeg,image/webp";
  picker.style.display = "none";
  picker.addEventListener("change", () => { sendFile(picker.files?.[0]); picker.value = ""; });
  const image = document.createElement("button");
  image.textContent = "Image…";
  image.title = "a new reference image from the next block (or drop one on this box)";
  image.addEventListener("click", () => picker.click());
  root.addEventListener("dragover", (event) => event.preventDefault());
  root.addEventListener("drop", (event) => { event.preventDefault(); sendFile(event.dataTransfer?.files?.[0]); });
  const lora = document.createElement("input");
  lora.type = "number";
  lora.step = "0.05";
  lora.placeholder = "LoRA";
  lora.title = "the merged LoRA's strength from the next block (Enter)";
  lora.style.cssText = "width:4em;background:#222;color:#ddd;border:1px solid #444;";
  lora.addEventListener("keydown", (event) => { if (event.key === "Enter") post(liveLoraRequest(id(), lora.value)); });
  return [picker, image, lora];
}

// ------------------------------------------------------------------------------------------------
// Causal sampler: presets (context menu) and the family combo fill the widgets from the Python table
// ------------------------------------------------------------------------------------------------
// Only the knobs the family's loop reads are shown (the others keep the family's value); "custom" shows all.
function showKnobs(node, preset) {
  const hide = hiddenKnobs(preset);
  const known = new Set(Object.values(causalPresets).flatMap((p) => Object.keys(p.values ?? {})));
  let changed = false;
  for (const widget of node.widgets ?? []) {
    if (!known.has(widget.name) || widget.name === FAMILY_WIDGET) continue;
    const hidden = hide.includes(widget.name);
    if (Boolean(widget.hidden) !== hidden) {
      widget.hidden = hidden;
      changed = true;
    }
  }
  if (changed) node.setSize?.([node.size[0], node.computeSize?.()[1] ?? node.size[1]]);
}

function applyFamily(node, name, preset) {
  const missing = applyPreset(node.widgets ?? [], preset);
  if (missing.length) console.warn(`[clipwan] preset ${name}: node has no widget ${missing.join(", ")}`);
  console.info(`[clipwan] preset ${presetDetails(name, preset)}`);
  showKnobs(node, preset);
  // the latent's length must fit the preset's blocks: set it where the latent is made
  const slot = node.findInputSlot?.("latent") ?? -1;
  const source = slot >= 0 ? node.getInputNode?.(slot) : null;
  const changed = source ? applyLength(source.widgets ?? [], preset) : null;
  if (changed && changed.before !== changed.after) {
    console.info(`[clipwan] preset ${name}: length ${changed.before} -> ${changed.after} on node ${source.id}`);
    source.setDirtyCanvas?.(true, true);
  }
  node.setDirtyCanvas?.(true, true);
}

// Picking a family in the combo fills the other widgets with that family's values (only when the user picks
// it: loading a saved workflow sets widget values without callbacks, so what was saved stays as saved).
function watchFamilyCombo(node) {
  const widget = node.widgets?.find((w) => w.name === FAMILY_WIDGET);
  if (!widget || widget.__clipwanFamily) return;
  widget.__clipwanFamily = true;
  const callback = widget.callback;
  widget.callback = function (value) {
    const result = callback?.apply(this, arguments);
    const preset = familyChosen(causalPresets, value);
    if (preset) applyFamily(node, value, preset);
    else showKnobs(node, null);
    return result;
  };
}

// ------------------------------------------------------------------------------------------------
// Export report
// ------------------------------------------------------------------------------------------------
function showReport(node, text) {
  if (!node.__clipwanReport) {
    const area = document.createElement("textarea");
    area.readOnly = true;
    area.className = "clipwan-report";
    area.style.cssText = "width:100%;height:100%;min-height:120px;font:11px monospace;background:#1b1b1b;" +
      "color:#ddd;border:none;resize:none;white-space:pre;";
    node.__clipwanReport = { area, widget: addDisplayWidget(node, "clipwan_report", area, 160) };
  }
  node.__clipwanReport.area.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: EXTENSION,

  async setup() {
    await loadPresets();
    api.addEventListener("clipwan.causal_frames", (event) => {
      const node = findNode(event.detail?.node);
      if (node && PLAYERS.includes(node.type)) showFrames(node, event.detail);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (PLAYERS.includes(nodeData.name)) { // both take the sampler's widgets: same presets
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        watchFamilyCombo(this);
        // The inputs marked advanced (settings_spec: `advanced` in their options, as core marks its own) go
        // behind the node's "Show Advanced" menu entry: the canvas renderer reads `widget.advanced`, which
        // this frontend (1.49) sets only for the Vue renderer and the properties panel (`options.advanced`).
        if (markAdvanced(this.widgets ?? []).length && this.size) this.setSize?.([this.size[0], this.computeSize()[1]]);
        if (LIVE.includes(nodeData.name)) livePromptBox(this);
        return result;
      };
      // A workflow saved by an earlier version of the node: its widget values re-read by name (ComfyUI restored
      // them by position, one widget off after an inserted input); then the saved family's knobs are shown.
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (info) {
        const result = onConfigure?.apply(this, arguments);
        const known = widgetLayouts[nodeData.name];
        const named = migrateWidgetValues(known?.layouts, info?.widgets_values);
        if (named) {
          restoreByName(this.widgets ?? [], named, known.defaults);
          console.info(`[clipwan] node ${this.id}: widget values saved by an earlier version, restored by name`);
        }
        const family = this.widgets?.find((w) => w.name === FAMILY_WIDGET)?.value;
        showKnobs(this, familyChosen(causalPresets, family));
        return result;
      };
      const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
      nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
        // Keep whatever an earlier handler returns, and add ours to the list we are given. Returning that
        // list itself would make the front end (which prepends a returned array) show every entry twice.
        const returned = getExtraMenuOptions?.apply(this, arguments);
        const node = this;
        options.push(null, {
          content: "ClipWan presets",
          has_submenu: true,
          submenu: {
            options: Object.entries(causalPresets).map(([name, preset]) => ({
              content: presetLabel(name, preset),
              callback: () => applyFamily(node, name, preset), // sets the family combo too
            })),
          },
        });
        return returned;
      };
    }
    if (nodeData.name === STREAM) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const video = savedVideo(message);
        if (video) showSavedVideo(this, video);
      };
    }
    if (REPORTERS.includes(nodeData.name)) {
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (message) {
        onExecuted?.apply(this, arguments);
        const text = reportText(message);
        if (text) showReport(this, text);
      };
    }
  },
});
