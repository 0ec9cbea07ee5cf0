"""Pulsar2 build inputs: one JSON config per model, validated; the build script; running ``pulsar2 build``.

The schema below is encoded from AXERA-TECH/pulsar2-docs-en ``user_guides_config/config.md`` (top level,
``quant``, ``input_processors``, ``output_processors``, ``compiler``); the configs follow AXERA-TECH/clip.axera's
proven CLIP builds (whole graph U16, MinMax; text: Numpy int32 calibration).

Two toolchain generations are in use (``TOOLCHAINS``; each checked against the docs commit it names). Between
5.1 and 7.0 the config schema kept every field we write; what changed is which targets exist (7.0 adds AX615,
AX637 and AX8860, whose ``npu_mode`` counts NPU cores: NPU1/NPU2/NPU4) and that ``onnx_opt.enable_onnxsim`` runs
onnxslim instead of onnx-simplifier. Our graphs are exported static with constants folded, so we leave that
option off under both. A config is validated against every toolchain that has its target; the manifest says which.

Pulsar2 is not pip-installable (docker image ``pulsar2:<version>`` from Axera). When ``pulsar2`` is on PATH we
run it and report exactly what happened; otherwise we say the inputs are ready and print the command.
An ``.axmodel`` is reported only if the build exited 0 and the file exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import time
from typing import Optional

@dataclasses.dataclass(frozen=True)
class Toolchain:
    version: str  # the docker image tag users load (pulsar2:<version>)
    docs: str  # where its config reference was read
    targets: dict  # target_hardware → npu modes
    simplifier: str  # what onnx_opt.enable_onnxsim runs


_AX650_FAMILY = {"AX650": ("NPU1", "NPU2", "NPU3"), "AX620E": ("NPU1", "NPU2"), "M76H": ("NPU1", "NPU2", "NPU3"),
                 "M57": ("NPU1",)}
TOOLCHAINS = {
    "5": Toolchain("5.1", "AXERA-TECH/pulsar2-docs-en @70ca4c3 (2026-03-31; release notes up to Pulsar2 5.1), "
                          "user_guides_config/config.md", dict(_AX650_FAMILY), "onnx-simplifier"),
    "7": Toolchain("7.0", "AXERA-TECH/pulsar2-docs-en @83fa86a (2026-07-30; Pulsar2 7.0), "
                          "user_guides_config/config.md and neutron/v6, v7/introduction.md",
                   dict(_AX650_FAMILY, AX615=("NPU1", "NPU2"), AX637=("NPU1",), AX8860=("NPU1", "NPU2", "NPU4")),
                   "onnxslim"),
}
# every target any supported toolchain knows, with the npu modes of the newest toolchain that has it
TARGETS = {target: modes for tc in TOOLCHAINS.values() for target, modes in tc.targets.items()}
# chips users name → Pulsar2's target_hardware (AX630C/AX631 are the AX620E family; AX650N/AX8850 cards: AX650)
CHIPS = {"AX650N": "AX650", "AX8850": "AX650", "AX630C": "AX620E", "AX631": "AX620E"}
DEFAULT_PULSAR2_VERSION = "5.1"


def resolve_target(name: str) -> str:
    """A chip or target name (case-insensitive) → Pulsar2's ``target_hardware``."""
    key = str(name).strip().upper()
    target = CHIPS.get(key, key)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)} or a chip {sorted(CHIPS)}, got {name!r}")
    return target


def toolchains_for(target: str) -> list:
    """The Pulsar2 versions (oldest first) whose docs list ``target``."""
    return [tc.version for tc in TOOLCHAINS.values() if target in tc.targets]


def docker_version(target: str) -> str:
    """The image tag build_axmodel.sh uses by default: 5.1 (proven for CLIP) where it has the target, else the
    oldest toolchain that has it."""
    versions = toolchains_for(target)
    return DEFAULT_PULSAR2_VERSION if DEFAULT_PULSAR2_VERSION in versions else versions[0]
PRECISIONS = ("u16", "mixed")

_DTYPES = ("U8", "S8", "U16", "S16", "FP32")
_SRC_DTYPES = ("U8", "S8", "U16", "S16", "U32", "S32", "FP16", "FP32")
# key → allowed python types, or a tuple of allowed values (enum); nested sections are dicts of the same.
SCHEMA = {
    "input": str, "output_dir": str, "output_name": str, "work_dir": str,
    "model_type": ("ONNX", "QuantAxModel", "QuantONNX"),
    "target_hardware": tuple(TARGETS),
    "npu_mode": ("NPU1", "NPU2", "NPU3", "NPU4"),
    "input_shapes": str,
    "onnx_opt": {"disable_onnx_optimization": bool, "enable_onnxsim": bool, "model_check": bool,
                 "disable_transformation_check": bool, "save_tensors_data": bool},
    "quant": {
        "input_configs": [{"tensor_name": str, "calibration_dataset": str,
                           "calibration_format": ("Image", "Numpy", "Binary", "NumpyObject"),
                           "calibration_size": int, "calibration_mean": list, "calibration_std": list}],
        "layer_configs": [{"layer_name": str, "layer_names": list, "op_type": str, "op_types": list,
                           "start_tensor_names": list, "end_tensor_names": list, "data_type": _DTYPES,
                           "output_data_type": _DTYPES, "weight_data_type": ("S8", "FP32")}],
        "calibration_method": ("MinMax", "Percentile", "MSE", "KL"),
        "precision_analysis": bool, "precision_analysis_method": ("PerLayer", "EndToEnd"),
        "precision_analysis_mode": ("Reference", "NPUBackend"), "highest_mix_precision": bool,
        "conv_bias_data_type": ("S32", "FP32"), "ln_scale_data_type": _DTYPES,
        "enable_smooth_quant": bool, "smooth_quant_threshold": (int, float), "smooth_quant_strength": (int, float),
        "transformer_opt_level": (0, 1, 2), "check": int, "enable_easy_quant": bool, "enable_brecq": bool,
        "enable_lsq": bool, "enable_adaround": bool, "device": str,
    },
    "input_processors": [{"tensor_name": str, "tensor_format": ("AutoColorSpace", "BGR", "RGB", "GRAY"),
                          "tensor_layout": ("NCHW", "NHWC"), "src_format": str, "src_layout": ("NCHW", "NHWC"),
                          "src_dtype": _SRC_DTYPES, "src_extra_shapes": list, "csc_mode": str, "mean": list,
                          "std": list, "padding": dict, "slicing": dict}],
    "output_processors": [{"tensor_name": str, "dst_perm": list, "output_dtype": ("FP32", "U8")}],
    "const_processors": list, "quant_op_processors": list,
    "compiler": {"static_batch_sizes": list, "max_dynamic_batch_size": int, "ddr_bw_limit": (int, float),
                 "check": (0, 1, 2, 3), "check_mode": str, "check_rtol": (int, float), "check_atol": (int, float),
                 "check_cosine_simularity": (int, float), "npu_perf": bool, "enable_slice_mode": bool,
                 "enable_tile_mode": bool},
}
_LAYER_SELECTORS = ("layer_name", "layer_names", "op_type", "op_types", "start_tensor_names")


def _validate(value, schema, where: str, errors: list) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{where}: must be an object, got {type(value).__name__}")
            return
        for key, item in value.items():
            if key not in schema:
                errors.append(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(schema))})")
            else:
                _validate(item, schema[key], f"{where}.{key}", errors)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            errors.append(f"{where}: must be a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _validate(item, schema[0], f"{where}[{i}]", errors)
    elif isinstance(schema, tuple) and all(isinstance(s, type) for s in schema):
        if not isinstance(value, schema) or isinstance(value, bool):
            errors.append(f"{where}: must be a number, got {value!r}")
    elif isinstance(schema, tuple):
        if value not in schema or isinstance(value, bool):
            errors.append(f"{where}: {value!r} is not one of {list(schema)}")
    elif schema is int:
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{where}: must be an integer, got {value!r}")
    elif not isinstance(value, schema):
        errors.append(f"{where}: must be {schema.__name__}, got {type(value).__name__} {value!r}")


def validate_config(config: dict, version: Optional[str] = None) -> list[str]:
    """Every problem in a Pulsar2 build config, each naming the key path ([] = valid). ``version``: "5" or "7"
    (a toolchain of ``TOOLCHAINS``) checks the target and npu_mode against that toolchain; None: against the
    newest toolchain that has the target."""
    errors: list = []
    _validate(config, SCHEMA, "config", errors)
    target = config.get("target_hardware", "AX650")
    mode = config.get("npu_mode", "NPU1")
    if version is not None:
        tc = TOOLCHAINS[str(version).split(".")[0]]
        if target in TARGETS and target not in tc.targets:
            errors.append(f"config.target_hardware: {target} is not a target of Pulsar2 {tc.version} "
                          f"(it has {sorted(tc.targets)})")
        modes = tc.targets.get(target)
    else:
        modes = TARGETS.get(target)
    if modes and mode in SCHEMA["npu_mode"] and mode not in modes:
        errors.append(f"config.npu_mode: {mode} is not available on {target} (choose {list(modes)})")
    for i, layer in enumerate(config.get("quant", {}).get("layer_configs", []) or []):
        if isinstance(layer, dict) and not any(k in layer for k in _LAYER_SELECTORS):
            errors.append(f"config.quant.layer_configs[{i}]: selects no layers (give one of {_LAYER_SELECTORS})")
        if isinstance(layer, dict) and ("start_tensor_names" in layer) != ("end_tensor_names" in layer):
            errors.append(f"config.quant.layer_configs[{i}]: start_tensor_names and end_tensor_names go together")
    for i, ic in enumerate(config.get("quant", {}).get("input_configs", []) or []):
        if isinstance(ic, dict) and "calibration_dataset" not in ic:
            errors.append(f"config.quant.input_configs[{i}]: calibration_dataset is required")
    return errors


# Ops whose quantisation error CLIP feels most (attention scores, normalisation, residual sums): kept in U16
# in the "mixed" precision, as in AXERA-TECH/clip.axera's ``*_u16_fc_u8.json``.
SENSITIVE_OPS = ["Softmax", "LayerNormalization", "ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Add", "Concat",
                 "Conv", "MatMul", "Mul", "Sigmoid", "Erf",
                 "ReduceSum"]  # Jina-CLIP's masked mean pooling in the text graph (sum over tokens)


def _layer_configs(precision: str) -> list:
    if precision == "u16":  # the proven setting: the whole graph in U16
        return [{"start_tensor_names": ["DEFAULT"], "end_tensor_names": ["DEFAULT"], "data_type": "U16"}]
    if precision == "mixed":
        return [{"op_types": list(SENSITIVE_OPS), "data_type": "U16"}]
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _quant(input_name: str, calib_tar: str, precision: str, analysis_mode: str) -> dict:
    """The quantisation block both towers share: Numpy calibration of every sample, MinMax, end-to-end
    precision analysis (``Reference`` = float ONNX, ``NPUBackend`` = simulated NPU)."""
    return {
        "input_configs": [{"tensor_name": input_name, "calibration_dataset": calib_tar,
                           "calibration_format": "Numpy", "calibration_size": -1}],
        "layer_configs": _layer_configs(precision),
        "calibration_method": "MinMax",
        "precision_analysis": True,
        "precision_analysis_method": "EndToEnd",
        "precision_analysis_mode": analysis_mode,
    }


def _model_config(target: str, npu_mode: str, quant: dict, input_processors: list) -> dict:
    return {"model_type": "ONNX", "target_hardware": target, "npu_mode": npu_mode, "quant": quant,
            "input_processors": input_processors, "output_processors": [],
            "compiler": {"static_batch_sizes": [1]}}


def vision_config(input_name: str, calib_tar: str, npu_mode: str = "NPU3", precision: str = "u16",
                  target: str = "AX650") -> dict:
    """Vision tower: input is the already-normalised float32 tensor, so the processors do mean 0 / std 1."""
    quant = _quant(input_name, calib_tar, precision, "Reference")
    quant["conv_bias_data_type"] = "FP32"
    if precision == "mixed":
        quant.update(enable_smooth_quant=True, smooth_quant_strength=0.75)
    processors = [{"tensor_name": input_name, "tensor_format": "RGB", "tensor_layout": "NCHW",
                   "src_layout": "NCHW", "src_dtype": "FP32", "mean": [0, 0, 0], "std": [1, 1, 1]}]
    return _model_config(target, npu_mode, quant, processors)


def text_config(input_name: str, calib_tar: str, npu_mode: str = "NPU3", precision: str = "u16",
                target: str = "AX650") -> dict:
    """Text tower: int32 token ids (``src_dtype S32``), Numpy calibration of every prompt."""
    quant = _quant(input_name, calib_tar, precision, "NPUBackend")
    quant["transformer_opt_level"] = 1
    return _model_config(target, npu_mode, quant, [{"tensor_name": input_name, "src_dtype": "S32"}])


def write_config(config: dict, path: str) -> dict:
    """Validate against every toolchain that has the config's target, then write. Returns
    ``{"5.1": "ok", "7.0": "ok"}`` (what the manifest records as checked)."""
    target = config.get("target_hardware", "AX650")
    checked = {}
    errors = validate_config(config)
    for key, tc in TOOLCHAINS.items():
        if target in tc.targets:
            found = validate_config(config, key)
            errors += [e for e in found if e not in errors]
            checked[tc.version] = "ok" if not found else "; ".join(found)
    if errors:
        raise ValueError("invalid Pulsar2 config:\n  " + "\n  ".join(errors))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return checked


@dataclasses.dataclass
class BuildStep:
    """One ``pulsar2 build`` (paths relative to the export folder, where the commands run)."""

    part: str
    onnx: str
    config: str
    output_dir: str
    output_name: str
    target: str
    npu_mode: str

    def args(self) -> list:
        return ["pulsar2", "build", "--input", self.onnx, "--config", self.config, "--output_dir",
                self.output_dir, "--output_name", self.output_name, "--target_hardware", self.target,
                "--npu_mode", self.npu_mode]

    def native(self) -> str:
        return shlex.join(self.args())

    def docker(self, version: str = DEFAULT_PULSAR2_VERSION) -> str:
        return (f'docker run --rm -v "$PWD":/data -w /data pulsar2:{version} ' + self.native())


def write_build_script(steps: list, folder: str, random_init: bool, version: str = DEFAULT_PULSAR2_VERSION) -> str:
    """``build_axmodel.sh``: native pulsar2 when on PATH, else the docker image ``pulsar2:<version>``."""
    lines = ["#!/usr/bin/env sh",
             "# Generated by comfyui-clipwan export-axera: compiles the ONNX models here into .axmodel files.",
             "# Native:  pulsar2 on PATH (Axera's toolchain).  Docker:  docker load -i ax_pulsar2_${V}.tar.gz first.",
             "# Override the image version with PULSAR2_VERSION=<version> ./build_axmodel.sh"]
    if random_init:
        lines.append("# NOTE: these models are the seeded RANDOM-INIT default, not pretrained CLIP weights.")
    lines += ["set -e", 'cd "$(dirname "$0")"', f'PULSAR2_VERSION="${{PULSAR2_VERSION:-{version}}}"', "",
              "if command -v pulsar2 >/dev/null 2>&1; then"]
    for step in steps:
        lines.append(f"  {step.native()}")
    lines.append("else")
    for step in steps:
        lines.append(f"  {step.docker('${PULSAR2_VERSION}')}")
    lines.append("fi")
    for step in steps:
        lines.append(f"cp {shlex.quote(os.path.join(step.output_dir, step.output_name))} "
                     f"{shlex.quote(step.output_name)}")
    path = os.path.join(folder, "build_axmodel.sh")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path


@dataclasses.dataclass
class BuildResult:
    part: str
    status: str  # "built" | "failed" | "not run (pulsar2 not on PATH)"
    command: str
    axmodel: Optional[str] = None  # relative file name, only when it exists
    seconds: float = 0.0
    log_tail: str = ""
    version: str = ""


def pulsar2_available() -> Optional[str]:
    return shutil.which("pulsar2")


def pulsar2_version() -> str:
    exe = pulsar2_available()
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip().splitlines()[-1] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def run_builds(steps: list, folder: str, timeout: Optional[float] = None) -> list:
    """Run each step with the native ``pulsar2`` if it is on PATH; never claims a file that is not there."""
    exe = pulsar2_available()
    results = []
    if exe is None:
        return [BuildResult(s.part, "not run (pulsar2 not on PATH)", s.native()) for s in steps]
    version = pulsar2_version()
    for step in steps:
        t0 = time.perf_counter()
        log_path = os.path.join(folder, f"pulsar2_{step.part}.log")
        built = os.path.join(folder, step.output_dir, step.output_name)
        for stale in (built, os.path.join(folder, step.output_name)):  # only this run's output may count
            if os.path.exists(stale):
                os.remove(stale)
        try:
            with open(log_path, "w") as log:
                proc = subprocess.run([exe] + step.args()[1:], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        except OSError as exc:
            code = f"could not start ({exc})"
        with open(log_path, errors="replace") as log:
            tail = log.read()[-2000:]
        result = BuildResult(step.part, "failed", step.native(), seconds=round(time.perf_counter() - t0, 2),
                             log_tail=tail, version=version)
        if code == 0 and os.path.isfile(built) and os.path.getsize(built) > 0:
            shutil.copyfile(built, os.path.join(folder, step.output_name))
            result.status, result.axmodel = "built", step.output_name
        elif code == 0:
            result.status = f"failed (pulsar2 exited 0 but {step.output_dir}/{step.output_name} is missing)"
        else:
            result.status = f"failed (exit {code}; see pulsar2_{step.part}.log)"
        results.append(result)
    return results
