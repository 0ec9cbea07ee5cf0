// Pure helpers for clipwan.js: no DOM, no ComfyUI imports, so tests can run them under Node.
//
// The causal-model presets come from the Python table (wan/sampling/presets.py) through GET /clipwan/presets:
// {name: {note, values, model_file, lora_file, checkpoint_entry, recommended_length, image_route, license}}.
// `values` are CausalWanSampler widget values, `family` (the combo whose loop rules the run follows) included;
// tests/test_workflows.py checks them against the node.
// `recommended_length` goes to the `length` of the node feeding the sampler's latent (applyLength).

export const PRESETS_PATH = "/clipwan/presets";
export const FAMILY_WIDGET = "family";

/** Context-menu label of a preset: what it sets and what else the user must choose to match it. */
export function presetLabel(name, preset) {
  const extra = [`length ${preset.recommended_length}`, preset.model_file];
  if (preset.lora_file) extra.push(`+ LoRA ${preset.lora_file}`);
  if (preset.checkpoint_entry && preset.checkpoint_entry !== "auto") extra.push(`entry ${preset.checkpoint_entry}`);
  return `${name} — ${preset.note} (${extra.join(", ")})`;
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

/** The report text from an `executed` message's ui dict ({report|text: str | [str]}), or "". */
export function reportText(message) {
  for (const key of ["report", "text"]) {
    const value = message?.[key];
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.filter((v) => typeof v === "string").join("\n");
  }
  return "";
}
