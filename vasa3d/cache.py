"""Cache keys that include the code: the source of the modules that produced the cached data.

A cache is keyed by everything that made it (settings, input bytes and code). :func:`source_hash`
covers the code: the bytes of every source file (``.py``, and the C++ and shipped assets beside
it) of the named modules or packages, so that an edit to any of them makes a new key and the data
is rebuilt instead of silently reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".npz", ".json", ".txt")


def module_files(name: str) -> list[Path]:
    """The source files of module or package ``name`` (a package: every source file under it), sorted."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"source_hash: no module named {name!r}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: everything under its folder
        files = [path for folder in spec.submodule_search_locations for path in Path(folder).rglob("*")
                 if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts and path.is_file()]
        return sorted(set(files))
    return [origin]


def source_hash(*modules: str, files: tuple[str | Path, ...] = ()) -> str:
    """A hex digest of the source of ``modules`` (dotted names; packages include all their files) and of
    any data ``files`` the code reads (a corpus, a table)."""
    digest = hashlib.sha256()
    named = [(name, path) for name in sorted(set(modules)) for path in module_files(name)]
    named += [("file", Path(path)) for path in files]
    for name, path in named:
        digest.update(f"{name}:{path.name}:".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())  # bytes, not mtimes: edits within a tick count
    return digest.hexdigest()[:16]
