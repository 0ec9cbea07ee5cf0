// Pure helpers for clipwan.js: no DOM, no ComfyUI imports, so tests can run them under Node.
//
// The causal-model presets come from the Python table (wan/sampling/presets.py) through GET /clipwan/presets:
// {name: {note, values, knobs, model_file, lora_file, checkpoint_entry, recommended_length, image_route, license}}.
// `values` are CausalWanSampler widget values, `family` (the combo whose loop rules the run follows) included;
// `knobs` the ones the family's loop reads (the node shows those for it);
// tests/test_workflows.py checks them against the node.
// `recommended_length` goes to the `length` of the node feeding the sampler's latent (applyLength).

export const PRESETS_PATH = "/clipwan/presets";
export const LAYOUTS_PATH = "/clipwan/widget_layouts";
export const FAMILY_WIDGET = "family";

/** Context-menu label of a preset: short enough for a submenu (the family and the length it sets). */
export function presetLabel(name, preset) {
  return Number.isFinite(preset.recommended_length) ? `${name} · ${preset.recommended_length} frames` : name;
}

/** What the user must choose to match a preset (files, entry) and what it runs: logged when it is applied. */
export function presetDetails(name, preset) {
  const extra = [`length ${preset.recommended_length}`, preset.model_file];
  if (preset.lora_file) extra.push(`+ LoRA ${preset.lora_file}`);
  if (preset.checkpoint_entry && preset.checkpoint_entry !== "auto") extra.push(`entry ${preset.checkpoint_entry}`);
  return `${name} — ${preset.note} (${extra.join(", ")})`;
}

/**
 * The preset widgets to hide for a family: those it sets (`values`) but its loop does not read (`knobs`), e.g.
 * sink and window for a family that attends everything. None for "custom" (null preset): every widget shows.
 */
export function hiddenKnobs(preset) {
  if (!preset || !Array.isArray(preset.knobs)) return [];
  return Object.keys(preset.values ?? {}).filter((name) => name !== FAMILY_WIDGET && !preset.knobs.includes(name));
}

/** Mark the widgets whose input options say `advanced` as advanced widgets; returns their names. */
export function markAdvanced(widgets) {
  const marked = [];
  for (const widget of widgets) {
    if (!widget.options?.advanced) continue;
    widget.advanced = true;
    marked.push(widget.name);
  }
  return marked;
}

/**
 * Saved widget values read by name. ComfyUI restores `widgets_values` by position; a list saved by an earlier
 * version of the node (before a widget was inserted) would land one widget off. `layouts` are the node's
 * layouts, oldest first, the current one last (GET /clipwan/widget_layouts, built from the Python settings
 * declaration). Returns {input name: value} for a list saved with an earlier layout (matched by length), null
 * when it has the current layout or matches none.
 */
export function migrateWidgetValues(layouts, values) {
  if (!Array.isArray(layouts) || !layouts.length || !Array.isArray(values)) return null;
  if (values.length === layouts[layouts.length - 1].length) return null;
  const layout = layouts.find((names) => names.length === values.length);
  return layout ? Object.fromEntries(layout.map((name, i) => [name, values[i]])) : null;
}

/**
 * Put migrated values on the node's widgets by name (a widget the old layout lacks gets its default); returns
 * the names set. Display-only widgets (serialize false) are left alone.
 */
export function restoreByName(widgets, named, defaults) {
  const set = [];
  for (const widget of widgets) {
    if (widget.serialize === false) continue;
    if (Object.prototype.hasOwnProperty.call(named, widget.name)) widget.value = named[widget.name];
    else if (Object.prototype.hasOwnProperty.call(defaults ?? {}, widget.name)) widget.value = defaults[widget.name];
    else continue;
    set.push(widget.name);
  }
  return set;
}

/**
 * Fit the video length to the preset: set `length` on the node that makes the sampler's latent (Wan I2V
 * Conditioning / WanImageToVideo) to the preset's recommended length, so pressing Run after choosing a preset
 * gives a latent its blocks fit. Returns the old and new length, or null when that node has no length widget.
 */
export function applyLength(widgets, preset) {
  const widget = widgets.find((w) => w.name === "length");
  if (!widget || !Number.isFinite(preset.recommended_length)) return null;
  const before = widget.value;
  widget.value = preset.recommended_length;
  widget.callback?.(widget.value);
  return { before, after: widget.value };
}

/**
 * Set the preset's values on matching widgets; returns the names the node lacks. The `family` combo is set
 * without firing its callback (choosing a family is what calls applyPreset: see familyChosen).
 */
export function applyPreset(widgets, preset) {
  const missing = [];
  for (const [name, value] of Object.entries(preset.values)) {
    const widget = widgets.find((w) => w.name === name);
    if (!widget) {
      missing.push(name);
      continue;
    }
    widget.value = value;
    if (name !== FAMILY_WIDGET) widget.callback?.(value);
  }
  return missing;
}

/**
 * The preset to apply when the user picks `value` in the family combo: that family's entry, or null for
 * "custom" (the widgets stay as they are) and for names the menu does not know.
 */
export function familyChosen(presets, value) {
  return Object.prototype.hasOwnProperty.call(presets ?? {}, value) ? presets[value] : null;
}

const MAGIC = [
  ["/9j/", "image/jpeg"],
  ["iVBOR", "image/png"],
  ["UklGR", "image/webp"],
  ["R0lGOD", "image/gif"],
];

/** Data URL for a frame sent as a data URL or as bare base64 (type sniffed from the first bytes). */
export function frameToDataUrl(frame) {
  if (typeof frame !== "string" || !frame) return null;
  if (frame.startsWith("data:")) return frame;
  const hit = MAGIC.find(([prefix]) => frame.startsWith(prefix));
  return `data:${hit ? hit[1] : "image/png"};base64,${frame}`;
}

/** {urls, block, totalBlocks} from a `clipwan.causal_frames` event payload. */
export function decodeFramePayload(payload) {
  const frames = Array.isArray(payload?.frames) ? payload.frames : [];
  return {
    urls: frames.map(frameToDataUrl).filter(Boolean),
    block: Number.isFinite(payload?.block) ? payload.block : 0,
    totalBlocks: Number.isFinite(payload?.total_blocks) ? payload.total_blocks : 0,
  };
}

/** The stream's latest prompt change in a frame payload ("prompt 3 from block 12: ..."), or "". */
export function framePrompt(payload) {
  return typeof payload?.prompt === "string" ? payload.prompt : "";
}

// Live prompts (nodes/timeline_nodes.py): POST {text, transition, blend_blocks} to a running stream node.
export const LIVE_PATH = "/clipwan/live";

/** {path, body} of the request that sends `text` to the stream node `nodeId` (a subgraph id "a:b" is sent as is;
 * `blendBlocks` > 0 blends over that many blocks instead of switching); null for an empty text. */
export function livePromptRequest(nodeId, text, blendBlocks = 0) {
  const prompt = typeof text === "string" ? text.trim() : "";
  if (!prompt) return null;
  const blocks = Math.max(0, Math.floor(Number(blendBlocks) || 0));
  const body = blocks > 0 ? { text: prompt, transition: "blend", blend_blocks: blocks } : { text: prompt };
  return { path: `${LIVE_PATH}/${encodeURIComponent(String(nodeId))}/prompt`, body: JSON.stringify(body) };
}

/** {path, body} of a live image change (nodes/timeline_control_nodes.py): `dataUrl` a data: URL of a PNG/JPEG/WebP
 * (what FileReader.readAsDataURL gives), `name` the file's name for the player's label; `blendBlocks` > 0 moves the
 * CLIP reference over that many blocks. null for anything that is not an image data URL. */
export function liveImageRequest(nodeId, dataUrl, name = "", blendBlocks = 0) {
  if (typeof dataUrl !== "string" || !/^data:image\/[\w.+-]+;base64,/.test(dataUrl)) return null;
  const blocks = Math.max(0, Math.floor(Number(blendBlocks) || 0));
  const body = { image: dataUrl, name: String(name || "image") };
  if (blocks > 0) body.blend_blocks = blocks;
  return { path: `${LIVE_PATH}/${encodeURIComponent(String(nodeId))}/image`, body: JSON.stringify(body) };
}

/** {path, body} of a live LoRA strength change; null for a value that is not a finite number. */
export function liveLoraRequest(nodeId, strength) {
  const value = typeof strength === "string" && !strength.trim() ? NaN : Number(strength);
  if (!Number.isFinite(value)) return null;
  return { path: `${LIVE_PATH}/${encodeURIComponent(String(nodeId))}/lora`, body: JSON.stringify({ strength: value }) };
}

/** The report text from an `executed` message's ui dict ({report|text: str | [str]}), or "". */
export function reportText(message) {
  for (const key of ["report", "text"]) {
    const value = message?.[key];
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.filter((v) => typeof v === "string").join("\n");
  }
  return "";
}

// The stream node's saved video, in its `executed` message under a key of the pack's own (nodes/stream_nodes.py
// VIDEO_UI_KEY): the frame player that showed the live frames then plays the file. The front end draws its own
// preview for the keys below, so the node sends none of them: one player, not two stacked.
export const VIDEO_OUTPUT = "clipwan_video";
export const NATIVE_PREVIEW_KEYS = ["images", "gifs", "video", "animated", "audio", "3d"];

/** {filename, path (a /view URL path), mime} of the first saved video in an `executed` ui dict, or null. */
export function savedVideo(message) {
  const items = message?.[VIDEO_OUTPUT];
  const item = Array.isArray(items) ? items[0] : null;
  if (!item || typeof item.filename !== "string" || !item.filename) return null;
  const params = new URLSearchParams({ filename: item.filename, subfolder: item.subfolder ?? "",
    type: item.type ?? "output" });
  const mime = item.filename.toLowerCase().endsWith(".webm") ? "video/webm" : "video/mp4";
  return { filename: item.filename, path: `/view?${params}`, mime };
}

/** The keys of an `executed` ui dict that make the front end add its own preview under the node. */
export function nativePreviewKeys(message) {
  return Object.keys(message ?? {}).filter((key) => NATIVE_PREVIEW_KEYS.includes(key));
}

// ------------------------------------------------------------------------------------------------------------
// Live CLIP scores (Causal Wan Stream Video with score_clip): the `clipwan.causal_frames` payload of each decoded
// piece carries `scores` [{frame, clip_t, clip_i, consistency}] (null where a score does not apply) and, with
// the video's first frames, `score_segments` [[start_frame, prompt], ...]. Definitions: docs/clip_vision.md.
// ------------------------------------------------------------------------------------------------------------
export const SCORE_NAMES = ["clip_t", "clip_i", "consistency"];
// Okabe-Ito (colour-blind safe, readable on dark and light themes): the same colours as the PNG chart.
export const SCORE_COLORS = { clip_t: "#E69F00", clip_i: "#56B4E9", consistency: "#009E73" };
export const SCORE_LABELS = { clip_t: "CLIP-T", clip_i: "CLIP-I", consistency: "consistency" };
export const MAX_SCORE_ROWS = 5000; // a long stream keeps its most recent scores only

/** Add a payload's scores to `state` ({rows, segments}); a payload starting at frame 0 starts a new run. */
export function mergeScores(state, payload) {
  const next = state && payload?.frame_start !== 0 ? state : { rows: [], segments: [] };
  if (Array.isArray(payload?.score_segments)) next.segments = payload.score_segments;
  if (Array.isArray(payload?.scores)) next.rows.push(...payload.scores.filter((r) => Number.isFinite(r?.frame)));
  if (next.rows.length > MAX_SCORE_ROWS) next.rows.splice(0, next.rows.length - MAX_SCORE_ROWS);
  return next;
}

/**
 * SVG geometry of the live chart: one polyline path per score over the frames, a vertical marker per prompt
 * switch (segments after the first), and the y range shown. Pure numbers, no DOM.
 */
export function scoreChart(state, width, height, pad = 4) {
  const rows = state?.rows ?? [];
  const values = rows.flatMap((r) => SCORE_NAMES.map((n) => r[n]).filter(Number.isFinite));
  if (!rows.length || !values.length) return { paths: {}, switches: [], range: null };
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
  const f0 = rows[0].frame, f1 = Math.max(rows[rows.length - 1].frame, f0 + 1);
  const x = (f) => pad + ((f - f0) / (f1 - f0)) * (width - 2 * pad);
  const y = (v) => pad + (1 - (v - lo) / (hi - lo)) * (height - 2 * pad);
  const paths = {};
  for (const name of SCORE_NAMES) {
    let d = "", pen = "M";
    for (const r of rows) {
      if (!Number.isFinite(r[name])) { pen = "M"; continue; } // a gap (e.g. the first frame's consistency)
      d += `${pen}${x(r.frame).toFixed(1)},${y(r[name]).toFixed(1)} `;
      pen = "L";
    }
    if (d) paths[name] = d.trim();
  }
  const switches = (state.segments ?? []).slice(1)
    .filter(([start]) => start >= f0 && start <= f1)
    .map(([start, prompt]) => ({ x: +x(start).toFixed(1), frame: start, prompt }));
  return { paths, switches, range: [lo, hi] };
}

/** The chart's one-line caption: the latest value of each score. */
export function scoreCaption(state) {
  const last = {};
  for (const r of state?.rows ?? []) for (const n of SCORE_NAMES) if (Number.isFinite(r[n])) last[n] = r[n];
  return SCORE_NAMES.filter((n) => n in last).map((n) => `${SCORE_LABELS[n]} ${last[n].toFixed(1)}`).join(" · ");
}
