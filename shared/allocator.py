"""The memory allocator of the project's processes: tcmalloc where it is installed.

The codecs allocate many large intermediate tensors per frame (im2col operands, feature maps of tens of MB). glibc's
malloc serves every block above 32 MB with a fresh ``mmap`` and returns it on ``free``, so each one page-faults
through the kernel again; on a virtual machine that is a large part of the time. tcmalloc (gperftools, Debian's
``libtcmalloc-minimal4``) keeps freed memory for reuse, as PyTorch's CPU performance guide recommends. Measured on
the 2-core AMD EPYC VM at 1280x720 (``icmh bench speed``): exact machine decode 567 -> 484 ms, PR human view
2.06 -> 1.63 s, PR residual encode 962 -> 833 ms, base encode 314 -> 285 ms; the same bits and pixels (an
allocator does not change arithmetic).

An allocator can only be chosen before a process starts, so the command-line entry points (``icmh``,
``icmh-cloud``, ``icmh-edge``) re-execute themselves once with tcmalloc preloaded (:func:`reexec_with_fast_allocator`)
(:func:`with_fast_allocator` gives the environment; the processes they start inherit it).
``ICMH_ALLOCATOR=system`` keeps glibc's malloc; without tcmalloc installed nothing changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ALLOCATOR_ENV = "ICMH_ALLOCATOR"  # tcmalloc (the default, where installed) | system
REEXEC_ENV = "ICMH_ALLOCATOR_REEXEC"  # set on the re-executed process: never a second time
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu",
                "/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def tcmalloc_path() -> str | None:
    """An installed tcmalloc shared library, or None."""
    for folder in LIBRARY_DIRS:
        for name in LIBRARIES:
            if (path := Path(folder) / name).is_file():
                return str(path)
    return None


def allocator_in_use() -> str:
    """``tcmalloc`` if this process has it loaded, else ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "libtcmalloc" in maps else "system"


def _wanted(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for tcmalloc (the default); an unknown choice is refused."""
    choice = env.get(ALLOCATOR_ENV, "tcmalloc")
    if choice not in ("tcmalloc", "system"):
        raise ValueError(f"{ALLOCATOR_ENV} must be tcmalloc or system, got {choice!r}")
    return choice == "tcmalloc"


def with_fast_allocator(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a child process, with tcmalloc preloaded when it is installed and wanted."""
    out = dict(env)
    path = tcmalloc_path()
    if path is None or not _wanted(out):
        return out
    preload = [p for p in out.get("LD_PRELOAD", "").split() if p]
    if path not in preload:
        out["LD_PRELOAD"] = " ".join([path, *preload])
    return out


def reexec_with_fast_allocator(argv: list[str] | None) -> None:
    """Re-execute this command with tcmalloc preloaded, once, when run as a command (``argv`` None: an entry point
    called with explicit arguments, as tests do, runs in the calling process as it is)."""
    if argv is not None or os.environ.get(REEXEC_ENV) or allocator_in_use() == "tcmalloc" or not _wanted(os.environ):
        return
    if tcmalloc_path() is None:
        return
    env = with_fast_allocator(os.environ)
    env[REEXEC_ENV] = "1"  # if the preload does not take, the second run goes on with the system allocator
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
