"""Package-level contracts: layout, ComfyUI entry points, and the core/ComfyUI boundary."""

import ast
import pathlib

import comfyui_clipwan

ROOT = pathlib.Path(comfyui_clipwan.__file__).resolve().parent
CORE_PACKAGES = ("clip_vision", "wan", "axera_export")
COMFY_MODULES = {"comfy", "folder_paths", "server", "nodes", "node_helpers", "latent_preview", "comfy_extras"}


def _top_level_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_core_never_imports_comfyui():
    offenders = []
    for pkg in CORE_PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for lineno, name in _top_level_imports(path):
                if name in COMFY_MODULES:
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {name}")
    assert offenders == []


def test_node_modules_import_comfyui_only_inside_functions():
    offenders = []
    for path in sorted((ROOT / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level statements only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n in COMFY_MODULES]
    assert offenders == []


def test_comfyui_entry_points():
    assert comfyui_clipwan.WEB_DIRECTORY == "./web"
    assert (ROOT / "web").is_dir()
    mappings = comfyui_clipwan.NODE_CLASS_MAPPINGS
    for node_id, cls in mappings.items():
        assert isinstance(cls.INPUT_TYPES(), dict), node_id
        assert isinstance(cls.RETURN_TYPES, tuple), node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert cls.CATEGORY.startswith("ClipWan"), node_id
        assert node_id in comfyui_clipwan.NODE_DISPLAY_NAME_MAPPINGS, node_id


def test_routes_are_not_registered_outside_comfyui():
    from comfyui_clipwan.nodes import register_server_routes

    assert register_server_routes() is False


def test_import_loads_no_heavy_optional_module():
    """Start-up of ComfyUI imports the pack: ONNX, ONNX Runtime, open_clip and transformers load on first use."""
    import subprocess
    import sys

    heavy = ("onnx", "onnxruntime", "open_clip", "transformers")
    code = ("import sys, comfyui_clipwan; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
