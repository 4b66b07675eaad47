"""libleak for Python: finds where the packaged `libleak` command and `libleak.so` are, and
lets a program name points of its run in the trace (`mark`).

The work is done by the Rust command (`libleak run`, `libleak report`) and the preloaded
interposer; this package only locates them and hands over. It must never load `libleak.so`
into the running interpreter (preloading is `libleak run`'s job: loaded late it would see
frees of blocks it never saw allocated), and must never run Python code from inside the
allocator hooks (`mark` is an ordinary ctypes call into the interposer).
"""

import ctypes
import os

__all__ = ["__version__", "binary", "interposer", "mark", "marking"]

_BIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin")


def _version():
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported anyway
        return "unknown"
    try:
        return version("libleak")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()


def binary():
    """The packaged `libleak` command (it finds `libleak.so` beside itself)."""
    path = os.path.join(_BIN_DIR, "libleak")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the libleak command is not in this installation ({path} is missing): "
            "install the wheel, or `pip install .` from a checkout"
        )
    return path


def interposer():
    """The packaged `libleak.so`, for `LD_PRELOAD`."""
    path = os.path.join(_BIN_DIR, "libleak.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"libleak.so is not in this installation ({path} is missing)")
    return path


def _mark_function():
    """`libleak_mark` when this process runs under libleak's preload, else None."""
    try:
        function = ctypes.CDLL(None).libleak_mark
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_char_p]
    function.restype = ctypes.c_int
    return function


_MARK = _mark_function()


def marking():
    """Whether this process is traced by libleak, so that `mark` records something."""
    return _MARK is not None


def mark(label):
    """Records a mark named `label` in this process's trace; False when not traced.

    A block allocated after the mark has a higher sequence number than the mark, and one
    allocated before it a lower one."""
    if _MARK is None:
        return False
    if isinstance(label, str):
        label = label.encode("utf-8", "replace")
    return _MARK(label) == 0
