"""Output files, written the one way: into a temporary file of their own beside the target, then moved into
place whole, with the permissions every other file the user makes gets (``0666 & ~umask``: mkstemp and
safetensors create 0600 files), and names reserved before a run starts so two runs never share a file.
"""

from __future__ import annotations

import os
import tempfile
import threading


def current_umask() -> int:
    """The process umask, read without changing it where the kernel says it (``os.umask`` is a swap)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_umask_lock = threading.Lock()


def temporary_beside(path: str, suffix: str = "") -> str:
    """A new, empty, uniquely named hidden file in ``path``'s folder (one per writer: two writers of the same
    target never share it); the caller moves it into place with ``publish`` or removes it."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".partial{suffix}", dir=folder)
    os.close(fd)
    return tmp


def publish(tmp: str, path: str) -> str:
    """Give ``tmp`` the user's default file mode and move it onto ``path`` in one step (atomic on a filesystem)."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    return path


def reserve_numbered(folder: str, name_for_counter, start: int = 1, tries: int = 100000) -> tuple[str, int]:
    """Create (exclusively) the first free file ``name_for_counter(n)`` for n = start, start+1 ... in ``folder``
    and return ``(path, n)``: the empty file holds the name for this run, so a second run that starts at the
    same time takes the next number instead of the same file."""
    for counter in range(start, start + tries):
        path = os.path.join(folder, name_for_counter(counter))
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path, counter
    raise FileExistsError(f"no free output name in '{folder}' after {tries} tries; clean the folder up.")


def save_safetensors(tensors: dict, path: str, metadata: dict = None) -> str:
    """``safetensors.torch.save_file`` the one way: a temporary of its own, then ``publish`` (whole file, the
    user's file mode; save_file alone makes 0600 files and leaves half a file on a full disk)."""
    from safetensors.torch import save_file

    tmp = temporary_beside(path)
    try:
        save_file(tensors, tmp, metadata=metadata)
        return publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj, path: str) -> str:
    """A JSON file written whole (temporary + ``publish``)."""
    import json

    tmp = temporary_beside(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        return publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def forget_summary(path: str) -> None:
    """Remove a previous run's summary before this run replaces the files it describes: a run stopped half-way
    then leaves no summary at all, never one that describes files it no longer matches (written anew at the end)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
