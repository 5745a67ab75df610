"""A restricted unpickler for score pickles written by CTR-GCN, MMCL-Action and their forks.

``pickle.load`` runs whatever callable a file names, so a score file from the internet could
run code. This unpickler resolves only an allow-list of globals: the NumPy functions and
classes needed to rebuild arrays, dtypes and scalars (under both the NumPy 1.x ``numpy.core``
and the NumPy 2.x ``numpy._core`` module paths). Plain containers (dict, list, tuple), str,
bytes, int, float, bool and None need no globals at all. Every other global is refused before
it is imported, so nothing in the file runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.errors import MMCLError


class UnsafePickleError(MMCLError):
    """A pickle names a global outside the allow-list."""


def _numpy_attr(module: str, name: str) -> Any:
    """``numpy.{_core|core}.{module}.{name}``, whichever this NumPy has (without deprecated shims)."""
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, module):  # NumPy 1.x
        core = np.core
    return getattr(getattr(core, module), name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as used by protocol-0/2 pickles for bytes, limited to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr("multiarray", "_reconstruct")
    scalar = _numpy_attr("multiarray", "scalar")
    frombuffer = _numpy_attr("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        # a dict subclass some forks write; constructing it runs no user code
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: io.BufferedIOBase, source: str, allowed: dict[tuple[str, str], Any]):
        # latin-1 lets NumPy rebuild arrays pickled under Python 2 (their data is a str)
        super().__init__(fh, encoding="latin1")
        self._source = source
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refused to unpickle: the file references the global "
                f"'{module}.{name}', which is not plain data. mmcl reads score pickles that hold "
                "only dict, list, tuple, str, int, float and NumPy arrays or scalars. If the "
                "file is yours, convert it to an mmcl score file (.npz) with a trusted script."
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused to unpickle: it uses persistent ids ({pid!r})")


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the allow-list; ``source`` names it in error messages."""
    return _load(io.BytesIO(data), source)


def safe_load(path: Path | str) -> Any:
    """Unpickle a file with the allow-list. Refused or broken files raise MMCLError naming the file."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise MMCLError(f"{path}: no such file") from None
    with fh:
        return _load(fh, str(path))


def _load(fh: Any, source: str) -> Any:
    unpickler = _RestrictedUnpickler(fh, source, _allowed_globals())
    try:
        return unpickler.load()
    except MMCLError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise MMCLError(f"{source}: not a readable score pickle ({type(exc).__name__}: {exc})") from None

