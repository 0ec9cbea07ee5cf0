// Pure helpers for clipwan.js: no DOM, no ComfyUI imports, so tests can run them under Node.
//
// CAUSAL_PRESETS hold the sampler settings the known causal Wan models were distilled and published with
// (their inference configs; see docs/wan.md). Keys are CausalWanSampler widget names; the test
// tests/test_workflows.py checks them against the node's INPUT_TYPES so a renamed input cannot slip by.

export const CAUSAL_PRESETS = {
  "Self-Forcing": {
    note: "steps 1000/750/500/250 warped by shift 5, 3 frames/block, full attention",
    values: { steps: "1000,750,500,250", shift: 5.0, warp_steps: true, frames_per_block: 3, sink_size: 0, local_window: 0, guidance_scale: 1.0 },
  },
  CausVid: {
    note: "steps 1000/757/522 fed as typed (warp off), σ from the shift-8 grid, 3 frames/block",
    values: { steps: "1000,757,522", shift: 8.0, warp_steps: false, frames_per_block: 3, sink_size: 0, local_window: 0, guidance_scale: 1.0 },
  },
  LongLive: {
    note: "steps 1000/750/500/250 shift 5, 3 frames/block, sink 3 + window 12 (long videos, flat memory)",
    values: { steps: "1000,750,500,250", shift: 5.0, warp_steps: true, frames_per_block: 3, sink_size: 3, local_window: 12, guidance_scale: 1.0 },
  },
};

/** Set the preset's values on matching widgets; returns the names the node lacks. */
export function applyPreset(widgets, preset) {
  const missing = [];
  for (const [name, value] of Object.entries(preset.values)) {
    const widget = widgets.find((w) => w.name === name);
    if (!widget) {
      missing.push(name);
      continue;
    }
    widget.value = value;
    widget.callback?.(value);
  }
  return missing;
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

/** The report text from an `executed` message's ui dict ({report|text: str | [str]}), or "". */
export function reportText(message) {
  for (const key of ["report", "text"]) {
    const value = message?.[key];
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.filter((v) => typeof v === "string").join("\n");
  }
  return "";
}
