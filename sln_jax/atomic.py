"""The one atomic file writer: a temporary file in the target's directory, then a rename.

No reader (a resumed conversion, an evaluation reading ``metrics.json``, a person opening a
picture) ever sees half a file: the data goes to ``.NAME.XXXX.tmp`` beside ``NAME`` and
``os.replace`` moves it in place, which POSIX makes atomic within one file system. On any
error the temporary file is removed and the error propagates.

Ground floor: NumPy, Pillow and the standard library only (imported by the conversion
workers, training, inference and evaluation alike).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["write_atomic", "write_bytes", "write_json", "write_png"]


_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 less the process umask (``open``'s mode for new files; mkstemp's is 0o600)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as f:
                _UMASK = next(int(line.split()[1], 8) for line in f
                              if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(temporary_path)`` in ``path``'s directory, then renames it to ``path``.

    Args:
      path: the file to create or replace; missing parent directories are created.
      write: writes the whole content to the path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # as a plain open() would: 0644 under umask 022
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomic(path, write)


def _json_default(value: Any) -> Any:
    """JSON encoding of NumPy scalars and arrays, and of RLE ``bytes`` counts."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = None,
               sort_keys: bool = False) -> None:
    """Writes ``payload`` as JSON to ``path`` atomically (NumPy values and bytes allowed).

    With ``indent`` the file ends with a newline (a file for people to read).
    """
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, default=_json_default, indent=indent, sort_keys=sort_keys)
            if indent is not None:
                f.write("\n")

    write_atomic(path, write)


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Writes uint8 [H, W] or [H, W, 3|4] pixels as a PNG atomically."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{path}: PNG pixels must be uint8, got {pixels.dtype}")
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
