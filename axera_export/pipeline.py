"""CLIP → ONNX → (checks, calibration, Pulsar2 configs, build script) → [pulsar2 build] → manifest + report.

Folder written (all paths in the manifest are relative to it, so it can be copied to the board as is)::

    vision.onnx  text.onnx  cpu_heads.npz  manifest.json  report.txt  build_axmodel.sh
    calib/vision_calib.tar  calib/text_calib.tar  pulsar2/vision.json  pulsar2/text.json
    [vision.axmodel  text.axmodel  build/…  pulsar2_*.log]   ← only when pulsar2 ran and succeeded
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import families, pulsar2
from .calibration import image_calibration_tar, synthetic_images, text_calibration_tar
from .onnx_export import (TEXT_INPUT, TEXT_OUTPUT, VISION_INPUT, VISION_OUTPUT, ExportGraph, check_export,
                          export_onnx, ort_session, parity)
from .runtime import MANIFEST, MANIFEST_FORMAT
from .sources import ClipSource, fp32_cpu, parse_parts
from .vocabulary import DEFAULT_LABELS

DEFAULT_PROMPTS = tuple(f"a photo of {label}." for label in DEFAULT_LABELS)

VISION_OUTPUTS = ("embeddings", "wan")
WAN_OUTPUT = "image_penultimate"
CPU_SPLIT = {
    "wan": {"npu": "patch Conv → pre-LN → all encoder blocks but the last (output image_penultimate: Wan 2.1's "
                   "i2v CLIP features)", "cpu": ["nothing: the features go to Wan's img_emb as they are"]},
    "vision": {"npu": "patch Conv → pre-LN → encoder blocks → post-LN of the CLS token (output image_pooled)",
               "cpu": ["visual_projection (fp32 GEMM)", "L2 normalisation"]},
    "text": {"npu": "token Gather (1-D ids) + positions → causal encoder blocks → final LN (output text_hidden)",
             "cpu": ["EOT pooling: hidden[argmax(input_ids)] (data-dependent gather)", "text_projection (fp32 GEMM)",
                     "L2 normalisation"]},
}


@dataclasses.dataclass
class ExportResult:
    folder: str
    manifest: dict
    report: str

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    def paths(self) -> dict:
        out = {}
        for part, info in self.manifest["parts"].items():
            out[f"{part}_onnx"] = os.path.join(self.folder, info["onnx"])
            if info.get("axmodel"):
                out[f"{part}_axmodel"] = os.path.join(self.folder, info["axmodel"])
        return out

    @property
    def ok(self) -> bool:
        return all(p["checks"]["ok"] for p in self.manifest["parts"].values())


def _check_npu_mode(npu_mode: str, target: str) -> None:
    if target not in pulsar2.TARGETS:
        raise ValueError(f"target must be one of {list(pulsar2.TARGETS)}, got {target!r}")
    if npu_mode not in pulsar2.TARGETS[target]:
        raise ValueError(f"npu_mode {npu_mode!r} is not available on {target}; choose one of "
                         f"{list(pulsar2.TARGETS[target])}")


RECOMMENDED_CALIBRATION_IMAGES = 32  # the node's tooltip and the CLI help say "32+ recommended"


def export_clip(source: ClipSource, folder: str, parts="vision,text", calib_images: Optional[Sequence] = None,
                prompts: Optional[Sequence[str]] = None, npu_mode: str = "NPU3", opset: int = 14,
                crop: Optional[str] = None, precision: str = "u16", target: str = "AX650", run_build: bool = True,
                parity_samples: int = 2, progress: Optional[Callable[[str], None]] = None,
                vision_output: str = "embeddings") -> ExportResult:
    """Export the requested towers of ``source`` into ``folder``; see the module doc for the layout.

    ``calib_images``: IMAGE tensors [B,H,W,C]; none → synthetic colour fields (said so in the report).
    ``prompts``: calibration prompts for the text tower; none → the built-in label prompts.
    ``crop``: image preprocessing (``center`` | ``none``); None → the family's (CLIP: center, SigLIP: none).
    ``vision_output``: ``embeddings`` (post-LN CLS; the CPU projects it: zero-shot) or ``wan`` (Wan 2.1's i2v
    features: the hidden states after all blocks but the last, [1, 257, 1280] for ViT-H/14, no projection).

    Atomic: everything is built in a hidden folder beside ``folder`` (manifest last) and swapped in at the end,
    so an interrupted or failed export leaves the previous export untouched, and a manifest always describes the
    files next to it. A non-empty ``folder`` that is not a previous export is refused (nothing of yours is moved).
    """
    parts = parse_parts(parts)
    source.require(parts)
    target = pulsar2.resolve_target(target)
    _check_npu_mode(npu_mode, target)
    if vision_output not in VISION_OUTPUTS:
        raise ValueError(f"vision_output must be one of {VISION_OUTPUTS}, got {vision_output!r}")
    family = families.get_family(source.family)
    if vision_output == "wan" and family.name != "clip":
        raise ValueError(f"vision_output='wan' exports Wan 2.1's CLIP ViT-H/14 features; {source.description} is a "
                         f"{family.title} model: export it with vision_output='embeddings'")
    crop = crop or family.default_crop
    if precision not in pulsar2.PRECISIONS:
        raise ValueError(f"precision must be one of {pulsar2.PRECISIONS}, got {precision!r}")
    say = progress or (lambda msg: None)
    folder = os.path.abspath(folder)
    check_export_target(folder)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.partial-", dir=os.path.dirname(folder))
    try:
        manifest = _build(source, work, parts, calib_images, prompts, npu_mode, opset, crop, precision, target,
                          run_build, parity_samples, say, vision_output)
        report = format_report(manifest, folder)
        with open(os.path.join(work, "report.txt"), "w") as f:
            f.write(report + "\n")
        with open(os.path.join(work, MANIFEST), "w") as f:  # last: it claims the files above
            json.dump(manifest, f, indent=2)
        _publish(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        release_memory()
    return ExportResult(folder, manifest, report)


def check_export_target(folder: str) -> None:
    """An export goes to a new folder, an empty one, or over a previous export; never over other files."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ValueError(f"export folder '{folder}' is a file; give a folder path (it is created if missing)")
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)):
        raise ValueError(f"export folder '{folder}' already holds other files and no previous export "
                         f"({MANIFEST}); give a new or empty folder (an export replaces its folder as a whole)")


def _publish(work: str, folder: str) -> None:
    """Swap the finished build in: modes as the user's umask says (mkdtemp/mkstemp make 0700/0600), then
    rename the old export aside, the new one into place, and delete the old one."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(work):
        for name in files:
            path = os.path.join(root, name)
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    os.chmod(work, 0o777 & ~mask)
    old = None
    if os.path.isdir(folder):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=os.path.dirname(folder))
        os.rename(folder, os.path.join(old, "export"))
    os.rename(work, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def release_memory() -> None:
    """Give freed memory back to the system: an export of a ViT-H frees several GB of tensors and protobuf
    buffers that glibc would otherwise keep in its arenas for the life of the ComfyUI process."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _build(source: ClipSource, folder: str, parts, calib_images, prompts, npu_mode, opset, crop, precision,
           target, run_build, parity_samples, say, vision_output="embeddings") -> dict:
    """Every file of the export written into ``folder`` (the hidden work folder); returns the manifest."""
    t_start = time.perf_counter()
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "source": source.description,
                "random_init": source.random_init, "target_hardware": target, "npu_mode": npu_mode,
                "precision": precision, "cpu_heads": "cpu_heads.npz", "parts": {}}
    family = families.get_family(source.family)
    manifest["family"] = family.manifest_block(source, None)
    split = {**CPU_SPLIT, **family.cpu_split}  # what runs where, per part, for the report
    heads = {}
    steps = []
    notes = []
    checked = {}  # part → {pulsar2 version: "ok"}
    gen = torch.Generator().manual_seed(0)

    if "vision" in parts:
        cv = source.vision
        config = cv.config
        wan = vision_output == "wan"
        if wan and not hasattr(cv.model, "penultimate"):
            raise ValueError(f"{source.description}: vision_output='wan' exports Wan 2.1's CLIP ViT features; this "
                             f"{family.title} vision tower has no such output: use vision_output='embeddings'")
        if config.proj_dim is None and not wan:
            raise ValueError(f"{source.description}: the vision tower has no visual_projection; image embeddings "
                             f"for zero-shot need it (use a CLIPVisionModelWithProjection / full CLIP file)")
        # fp32 on the CPU (a CLIP_VISION from ComfyUI may sit on the GPU in fp16): exported and parity reference
        reference = fp32_cpu(cv)
        if not wan:
            heads.update(family.vision_heads(reference))
        say(f"exporting vision tower {config.name} ({config.layers} layers) to ONNX opset {opset}")
        size = config.image_size
        onnx_v = export_onnx(ExportGraph(reference.model, "penultimate" if wan else "pooled"),
                             torch.zeros(1, 3, size, size), os.path.join(folder, "vision.onnx"), VISION_INPUT,
                             WAN_OUTPUT if wan else VISION_OUTPUT, opset)
        release_memory()  # the tracer's graph and protobuf buffers
        check_export(onnx_v)
        say("checking vision parity (ONNX Runtime vs torch)")
        pixels = torch.randn(parity_samples, 3, size, size, generator=gen)
        sess = ort_session(onnx_v.path)
        pooled = np.concatenate([sess.run(None, {VISION_INPUT: pixels[i:i + 1].numpy()})[0]
                                 for i in range(parity_samples)])
        # reference in fp32 on the CPU: an fp16/GPU CLIP_VISION would otherwise fail a 1e-4 check by itself
        del sess
        release_memory()
        if wan:  # the features themselves are compared: there is no CPU head
            ref = reference.encode(pixels, penultimate_only=True).penultimate_hidden_states.numpy()
            par = parity(pooled, ref)
        else:
            ref = reference.encode(pixels).image_embeds.numpy()
            par = parity(family.vision_head(pooled, heads), ref)
        images = list(calib_images) if calib_images else None
        if not images:
            images = synthetic_images()
            notes.append("vision calibration used SYNTHETIC colour fields (no images given): give 32+ real "
                         "images from your domain before a production build")
        elif sum(int(batch.shape[0]) for batch in images) < RECOMMENDED_CALIBRATION_IMAGES:
            count = sum(int(batch.shape[0]) for batch in images)
            warning = (f"vision calibration used only {count} image(s); {RECOMMENDED_CALIBRATION_IMAGES}+ from your "
                       f"domain are recommended, or the quantised model may lose accuracy")
            notes.append(warning)
            logging.getLogger(__name__).warning(warning)
        calib = image_calibration_tar(images, config, os.path.join(folder, "calib", "vision_calib.tar"), crop)
        cfg = pulsar2.vision_config(VISION_INPUT, "calib/vision_calib.tar", npu_mode, precision, target)
        checked["vision"] = pulsar2.write_config(cfg, os.path.join(folder, "pulsar2", "vision.json"))
        steps.append(pulsar2.BuildStep("vision", "vision.onnx", "pulsar2/vision.json", "build/vision",
                                       "vision.axmodel", target, npu_mode))
        manifest["parts"]["vision"] = _part_entry(onnx_v, par, calib, "pulsar2/vision.json",
                                                  split["wan" if wan else "vision"])
        manifest["parts"]["vision"].update(config=_vision_config_json(config), crop=crop, output_kind=vision_output)

    if "text" in parts:
        tw = source.text
        tokenizer = family.export_tokenizer(source)
        say(f"exporting text tower ({tw.config.layers} layers, width {tw.config.width}) to ONNX opset {opset}")
        onnx_t = export_onnx(ExportGraph(tw.build()), torch.from_numpy(tokenizer(["a photo"])),
                             os.path.join(folder, "text.onnx"), TEXT_INPUT, TEXT_OUTPUT, opset)
        check_export(onnx_t)
        heads.update(family.text_heads(tw))
        say("checking text parity (ONNX Runtime vs torch)")
        ids = tokenizer(list(DEFAULT_PROMPTS[:parity_samples]))
        sess = ort_session(onnx_t.path)
        hidden = np.concatenate([sess.run(None, {TEXT_INPUT: ids[i:i + 1]})[0] for i in range(len(ids))])
        del sess
        ref = tw.encode(torch.from_numpy(ids)).numpy()
        par = parity(family.text_head(hidden, ids, heads), ref)
        calib = text_calibration_tar(list(prompts) if prompts else list(DEFAULT_PROMPTS),
                                     os.path.join(folder, "calib", "text_calib.tar"), tw.config.context_length,
                                     tokenizer)
        if not prompts:
            notes.append("text calibration used the built-in label prompts (no prompts given)")
        cfg = pulsar2.text_config(TEXT_INPUT, "calib/text_calib.tar", npu_mode, precision, target)
        checked["text"] = pulsar2.write_config(cfg, os.path.join(folder, "pulsar2", "text.json"))
        steps.append(pulsar2.BuildStep("text", "text.onnx", "pulsar2/text.json", "build/text", "text.axmodel",
                                       target, npu_mode))
        manifest["parts"]["text"] = _part_entry(onnx_t, par, calib, "pulsar2/text.json", split["text"])
        # the tokenizer files travel with the export: the board tokenizes without open_clip (or torch)
        os.makedirs(os.path.join(folder, "tokenizer"), exist_ok=True)
        for name, path in tokenizer.files.items():
            shutil.copyfile(path, os.path.join(folder, "tokenizer", name))
        first = sorted(tokenizer.files)[0]
        manifest["parts"]["text"]["tokenizer"] = {"name": tokenizer.info.get("name", family.title),
                                                  "vocab": f"tokenizer/{first}",
                                                  "context_length": tokenizer.context_length}
        manifest["logit_scale"] = tw.logit_scale
        manifest["family"] = family.manifest_block(source, tokenizer)

    np.savez(os.path.join(folder, "cpu_heads.npz"), **heads)
    docker = pulsar2.docker_version(target)
    script = pulsar2.write_build_script(steps, folder, source.random_init, docker)
    manifest["build_script"] = os.path.basename(script)
    manifest["build_commands"] = {s.part: {"native": s.native(), "docker": s.docker(docker)} for s in steps}
    versions = pulsar2.toolchains_for(target)
    manifest["pulsar2"] = {"configs_valid_for": versions, "docker_image": f"pulsar2:{docker}",
                           "checked_against": {tc.version: tc.docs for tc in pulsar2.TOOLCHAINS.values()
                                               if tc.version in versions},
                           "checks": checked}

    builds = []
    if run_build and all(manifest["parts"][s.part]["checks"]["ok"] for s in steps):
        if pulsar2.pulsar2_available():
            say("running pulsar2 build (this takes minutes per model)")
        builds = pulsar2.run_builds(steps, folder)
    elif run_build:
        notes.append("pulsar2 was not run because a check failed (see above); fix the export first")
    for b in builds:
        manifest["parts"][b.part]["build"] = dataclasses.asdict(b)
        if b.axmodel:
            manifest["parts"][b.part]["axmodel"] = b.axmodel
    manifest["notes"] = notes
    manifest["seconds"] = round(time.perf_counter() - t_start, 2)
    return manifest


def _vision_config_json(config) -> dict:
    d = dataclasses.asdict(config)
    d["mean"], d["std"] = list(d["mean"]), list(d["std"])
    return d


def _part_entry(result, par: dict, calib: dict, config_path: str, split: dict) -> dict:
    checks = {"onnx_checker": result.checker, "ax650_op_issues": result.op_issues, "parity": par,
              "ok": result.checker == "ok" and not result.op_issues and par["ok"]}
    calib = dict(calib, path=os.path.relpath(calib["path"], os.path.dirname(result.path)))
    return {"onnx": os.path.basename(result.path), "external_data": result.external_data, "axmodel": None,
            "input": {"name": result.input_name, "shape": result.input_shape, "dtype": result.input_dtype},
            "output": {"name": result.output_name, "shape": result.output_shape, "dtype": "float32"},
            "opset": result.opset, "size_bytes": result.size_bytes, "export_seconds": result.seconds,
            "ops": result.ops, "checks": checks, "calibration": calib, "pulsar2_config": config_path,
            "split": split}


def format_report(manifest: dict, folder: str) -> str:
    """Human-readable summary: what was exported, checked, built — and what was NOT built."""
    lines = [f"CLIP → Axera export in {folder}", f"source: {manifest['source']}"]
    if manifest["random_init"]:
        lines.append("NOTE: random-init weights (the embedded default), not a pretrained CLIP.")
    lines.append(f"target {manifest['target_hardware']} {manifest['npu_mode']}, precision {manifest['precision']}")
    if manifest.get("pulsar2"):
        lines.append(f"Pulsar2 configs valid for {' and '.join(manifest['pulsar2']['configs_valid_for'])} "
                     f"(checked against the config reference of each); docker default "
                     f"{manifest['pulsar2']['docker_image']}")
    for part, p in manifest["parts"].items():
        c = p["checks"]
        par = c["parity"]
        lines.append(f"[{part}] {p['onnx']} ({p['size_bytes'] / 1e6:.1f} MB, opset {p['opset']}, "
                     f"{p['export_seconds']:.1f} s) input {p['input']['name']} {p['input']['shape']} "
                     f"{p['input']['dtype']} → {p['output']['name']} {p['output']['shape']}")
        lines.append(f"  onnx.checker: {c['onnx_checker']}")
        if c["ax650_op_issues"]:
            lines.append(f"  AX650 op list: {len(c['ax650_op_issues'])} problem(s) — fix before building:")
            lines += [f"    - {issue}" for issue in c["ax650_op_issues"]]
        else:
            ops = ", ".join(f"{k}×{v}" for k, v in p["ops"].items())
            lines.append(f"  AX650 op list: all ops supported ({ops})")
        lines.append(f"  parity ORT vs torch: max |diff| {par['max_abs_diff']:.2e} (tolerance "
                     f"{par['tolerance']:.0e}), min cosine {par['min_cosine']:.7f} → "
                     f"{'OK' if par['ok'] else 'FAILED'}")
        cal = p["calibration"]
        lines.append(f"  calibration: {cal['path']} ({cal['count']} × {cal['dtype']} {cal['shape']})")
        lines.append(f"  NPU: {p['split']['npu']}; CPU: {'; '.join(p['split']['cpu'])}")
        build = p.get("build")
        if p.get("axmodel"):
            lines.append(f"  BUILT: {p['axmodel']} with pulsar2 {build.get('version', '')} "
                         f"in {build['seconds']:.0f} s")
        elif build:
            lines.append(f"  NOT BUILT: pulsar2 {build['status']}")
        else:
            lines.append("  NOT BUILT: pulsar2 was not run")
    if not any(p.get("axmodel") for p in manifest["parts"].values()):
        lines.append("No .axmodel was built. The Pulsar2 build inputs are ready; build with:")
        lines.append(f"  cd {folder} && ./{manifest['build_script']}")
        for part, cmds in manifest["build_commands"].items():
            lines.append(f"  [{part}] native: {cmds['native']}")
            lines.append(f"  [{part}] docker: {cmds['docker']}")
    lines += [f"note: {n}" for n in manifest.get("notes", [])]
    lines.append(f"total {manifest['seconds']:.1f} s; manifest: {MANIFEST}")
    return "\n".join(lines)
