"""``bench weights``: the figures behind keeping the pack's own safetensors reader (weights.py's docstring).

Two of the bench's six subprocess loads (one per reader family, cast to fp32) and its truncated-file row; the
whole bench is ``comfyui-clipwan bench weights``."""

from comfyui_clipwan.benchmarks import bench_weights


def test_bench_weights_loads_and_only_the_pack_names_the_truncated_file(tmp_path):
    path = str(tmp_path / "model.safetensors")
    bench_weights._write_file(path, 8)
    for reader in ("pack", "safetensors.safe_open"):
        row = bench_weights._run_one(reader, path, cast=True)
        assert row["seconds"] > 0 and row["peak_mb"] > 0
        assert abs(row["loaded_mb"] - 2 * 9.0) < 1  # the whole file (9 MB of bf16 here) loaded, as fp32
    truncated = bench_weights._truncated(path)
    assert "model.safetensors.truncated" in truncated["pack"] and "Download it again" in truncated["pack"]
    assert truncated["safetensors"] != "accepted"  # the library refuses it too, without naming the file
    assert "model.safetensors" not in truncated["safetensors"]
