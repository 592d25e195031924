"""Build vislm's C kernels with the machine's C compiler on first use, and load them.

A kernel is one C file beside this module. It is compiled once per machine (optimised
for that CPU, `-march=native`) into a cache directory and loaded with ctypes; a later
process finds the library there. With OpenMP, the library links the OpenMP runtime that
PyTorch itself loaded, so kernels and PyTorch share one thread pool (two runtimes on the
same cores would fight over them).

Everything here is optional: without a C compiler, where the build fails, or with
VISLM_NATIVE_KERNELS=off, `load` returns None and callers keep their PyTorch path.
The cache lives in $VISLM_CACHE_DIR, else $XDG_CACHE_HOME/vislm, else ~/.cache/vislm.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

log = logging.getLogger(__name__)

ENV = "VISLM_NATIVE_KERNELS"
CACHE_ENV = "VISLM_CACHE_DIR"
BASE_FLAGS = ["-O3", "-fPIC", "-fno-math-errno"]


def enabled() -> bool:
    choice = os.environ.get(ENV, "auto").lower()
    if choice not in ("auto", "off"):
        raise ValueError(f"{ENV} must be auto or off, got {choice!r}")
    return choice == "auto"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vislm" / "kernels"


def compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def torch_openmp_library() -> Optional[Path]:
    """The OpenMP runtime (libgomp) this process loaded with PyTorch, or None (Linux only:
    read from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = sorted(set(re.findall(r"(/\S*libgomp[^/\s]*\.so[^/\s]*)", maps)))
    return Path(found[0]) if found else None


# name -> (architecture flags, OpenMP runtime or None) of each library loaded.
_built_with: Dict[str, Tuple[List[str], Optional[Path]]] = {}


@functools.lru_cache(maxsize=None)
def load(name: str) -> Optional[ctypes.CDLL]:
    """The compiled kernel library `name` (from name.c here), or None where it cannot be
    had (see the module's notes; the reason is logged once)."""
    if not enabled():
        return None
    cc = compiler()
    if cc is None:
        log.info("no C compiler found: vislm's fused %s kernels are off", name)
        return None
    source = Path(__file__).with_name(f"{name}.c")
    if not source.is_file():
        log.warning("%s is missing from the installed package: vislm's fused %s kernels are off",
                    source, name)
        return None
    openmp = torch_openmp_library()
    errors = []
    # Some compilers do not know -march=native; some lack OpenMP (the kernels then run on
    # one thread).
    attempts = [(["-march=native"], openmp), ([], openmp)]
    if openmp is not None:
        attempts.append((["-march=native"], None))
    for flags, runtime in attempts:
        path = _cached_build(cc, source, flags, runtime, errors)
        if path is not None:
            try:
                library = ctypes.CDLL(str(path))
                _built_with[name] = (flags, runtime)
                return library
            except OSError as error:
                log.warning("could not load %s (%s): vislm's fused %s kernels are off",
                            path, error, name)
                return None
    log.warning("building %s failed: vislm's fused %s kernels are off. %s", source.name, name,
                errors[-1])
    return None


def bind(name: str, signatures: Dict[str, Tuple[list, object]]) -> Optional[ctypes.CDLL]:
    """`load(name)` with its functions' argument and result types declared:
    {function name: (argtypes, restype)}."""
    library = load(name)
    if library is not None:
        for function, (argtypes, restype) in signatures.items():
            getattr(library, function).argtypes = argtypes
            getattr(library, function).restype = restype
    return library


def _cached_build(cc: str, source: Path, arch_flags: List[str], openmp: Optional[Path],
                  errors: List[str]) -> Optional[Path]:
    compile_flags = BASE_FLAGS + arch_flags + (["-fopenmp"] if openmp else [])
    # Linked against PyTorch's runtime by file name, not -lgomp (which would find the
    # system's copy); rpath so that the library also loads outside this process.
    link_flags = ([f"-L{openmp.parent}", f"-l:{openmp.name}", f"-Wl,-rpath,{openmp.parent}"]
                  if openmp else [])
    key = hashlib.sha256()
    headers = [header.read_bytes() for header in sorted(source.parent.glob("*.h"))]
    for part in (source.read_bytes(), *headers, _compiler_version(cc).encode(),
                 " ".join(compile_flags + link_flags).encode(), platform.machine().encode()):
        key.update(part)
    directory = cache_dir()
    target = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = Path(tempfile.gettempdir()) / "vislm-kernels"
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / target.name
        if target.exists():
            return target
    # Built under a temporary name and renamed: processes building at once never load a
    # half-written library.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    with tempfile.TemporaryDirectory() as work:
        obj = Path(work) / f"{source.stem}.o"
        steps = [[cc, *compile_flags, "-c", str(source), "-o", str(obj)],
                 [cc, "-shared", str(obj), "-o", partial, *link_flags, "-lm"]]
        for command in steps:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                Path(partial).unlink(missing_ok=True)  # a failed link may remove it itself
                errors.append(f"{' '.join(command)}: {done.stderr.strip()[-500:]}")
                return None
    os.replace(partial, target)
    return target


@functools.lru_cache(maxsize=None)  # asked for every kernel a process loads
def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return ""


def state(names=("layer_norm", "gelu", "cross_entropy")) -> str:
    """Whether vislm's C kernels are in use in this process, in words (for reports)."""
    if not enabled():
        return f"off ({ENV}=off)"
    cc = compiler()
    if cc is None:
        return "off (no C compiler)"
    built = [name for name in names if load(name) is not None]
    if not built:
        return f"off (building with {cc} failed)"
    flags, openmp = _built_with.get(built[0], ([], None))
    threads = f"OpenMP through PyTorch's {openmp.name}" if openmp else "one thread"
    return f"{', '.join(built)} built with {' '.join([cc, *flags])}, {threads}"
