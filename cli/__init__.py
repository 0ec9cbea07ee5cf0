"""Command line: ``comfyui-clipwan`` / ``python -m comfyui_clipwan``.

Each area registers its sub-commands from its own module in this package (``register(subparsers)``),
and contributes a step to ``demo`` (``demo_step(args, out_dir) -> dict``), so that ``demo`` runs the
pack's whole job on the embedded default models.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# Modules in this package that define register(subparsers) and optionally demo_step(args, out_dir).
_COMMAND_MODULES = ("clip", "wan", "score", "axera", "bench", "serve")
# Commands whose module keeps torch off its path (a board's service): parsed with that module alone, since the
# other command modules import torch at module level.
_LIGHT_COMMANDS = {"serve": "serve", "label-cache": "serve"}


def _load_command_modules(names=_COMMAND_MODULES):
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(f".{name}", __name__))
        except ModuleNotFoundError as exc:  # an area not built yet: its module is absent
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


def build_parser(argv=None) -> argparse.ArgumentParser:
    first = next((a for a in (argv or []) if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="comfyui-clipwan",
        description="CLIP ViT-H/14 features for Wan 2.1 i2v, block-causal Wan sampling, CLIP export to Axera.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if first in _LIGHT_COMMANDS:
        for module in _load_command_modules((_LIGHT_COMMANDS[first],)):
            module.register(sub)
        return parser
    modules = _load_command_modules()
    demo = sub.add_parser(
        "demo",
        help="run the pack's whole job on its embedded default (seeded random-init) models",
        description="Runs every stage of the pack on the embedded defaults and writes the results to --out.",
    )
    demo.add_argument("--out", default="clipwan_out", help="output folder (default: ./clipwan_out)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the default models and the noise")
    demo.set_defaults(func=_run_demo, _modules=modules)
    for module in modules:
        module.register(sub)
    return parser


def _run_demo(args) -> int:
    from ..outputs import forget_summary, write_json

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "demo_summary.json")
    forget_summary(path)
    print("comfyui-clipwan demo: every model below is the EMBEDDED DEFAULT, a seeded random-init model of the "
          "real architecture (no pretrained weights), so the numbers are real but the pictures are not.")
    summary = {}
    for module in args._modules:
        step = getattr(module, "demo_step", None)
        if step is None:
            continue
        t0 = time.perf_counter()
        result = step(args, args.out)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        summary[module.__name__.rsplit(".", 1)[-1]] = result
    write_json(summary, path)
    print(f"demo summary written to {path}")
    return 0


def describe_error(exc: BaseException) -> str:
    """One line for the user: what went wrong and what to do (never a traceback)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename is not None:
        path = exc.filename
        if isinstance(exc, IsADirectoryError):
            return f"'{path}' is a folder; give a file path there (e.g. '{os.path.join(path, 'out.safetensors')}')."
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            return (f"'{path}' is in the way: a file exists where a folder is needed. Give --out a folder path, or "
                    f"remove that file.")
        if isinstance(exc, PermissionError):
            return f"no permission to write or read '{path}'; choose a folder you can write to (--out)."
        return f"cannot use '{path}': {exc.strerror or exc}."
    if isinstance(exc, (FileNotFoundError, ValueError, RuntimeError)):
        return str(exc)  # our own errors already name the file/key/shape and the fix
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({type(exc).__name__})."
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller model (--dtype fp16/bf16), fewer frames or a smaller size."
    return (f"unexpected {type(exc).__name__}: {exc}. This is a bug in comfyui-clipwan; set {TRACEBACK_ENV}=1 to "
            f"see the traceback and report it.")


TRACEBACK_ENV = "CLIPWAN_TRACEBACK"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 — users get the message, not a traceback
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
