"""What the hardware runs natively: bf16 detection and a one-line CPU description.

bf16 pays only where the hardware multiplies bf16 natively. Elsewhere it is
*emulated* and slower than fp32: on an AVX2-only AMD EPYC (Zen 3) a bf16
GEMM runs at ≈ 1 GFLOP/s, and the sampler's ``*-bf16`` backends and the
loss's ``bf16_solves=True`` were measured ≈ 4× slower than fp32 (docs/results.md).

:func:`native_bf16` says whether a device multiplies bf16 natively:

* CPU (x86-64): the ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo``
  (Cooper Lake, Sapphire Rapids and later Xeons; Zen 4 and later EPYCs).
  ``torch.backends.cpu.get_cpu_capability()`` ("AVX2", "AVX512") does not
  tell, so the flags are read. CPU (aarch64): the ``bf16`` feature.
  No ``/proc/cpuinfo`` (macOS, Windows): assumed not native.
* CUDA: compute capability ≥ 8.0 (Ampere and later: bf16 tensor cores).
* anything else: not native.

Policy (decided for issue 15, item 12): an **explicit** bf16 request on
hardware without native bf16 (a ``*-bf16`` sampler backend, the loss's
``bf16_solves=True``) **runs as asked and warns once** per (request, device
type) with the reason (:func:`warn_if_bf16_not_native`), because it stays
correct, only slower, and a user may want it (e.g. to reproduce a GPU run's
numerics on a laptop). The ``auto`` backend never picks bf16 where it is not
native (:func:`deflow_trl.backends.resolve_backend`).

Example:
    >>> from deflow_trl.hardware import native_bf16, cpu_description
    >>> native_bf16("cpu", cpuinfo="flags\\t: fpu avx2 avx512f avx512_bf16\\n")
    True
    >>> native_bf16("cpu", cpuinfo="flags\\t: fpu avx2 fma\\n")
    False
    >>> isinstance(cpu_description(), str)
    True
"""
from __future__ import annotations

import functools
import os
import platform
import warnings

import torch

#: x86-64 /proc/cpuinfo flags that mean native bf16 dot products.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Flags worth naming in a benchmark's machine line.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "asimd", "sve")
CUDA_BF16_MIN_CAPABILITY = (8, 0)


@functools.lru_cache(maxsize=1)
def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, names: tuple[str, ...]) -> str:
    """The value of the first line whose key is one of ``names`` (first CPU)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first CPU's feature flags (``flags`` on x86-64, ``Features`` on aarch64)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    return set(_cpuinfo_field(text, ("flags", "features")).lower().split())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``model name`` in ``/proc/cpuinfo``), else ``platform.processor()``."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    return _cpuinfo_field(text, ("model name", "hardware", "cpu model")) or platform.processor() or platform.machine()


def bf16_not_native_reason(device: torch.device | str, cpuinfo: str | None = None) -> str | None:
    """``None`` when ``device`` multiplies bf16 natively, else why not (one phrase)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        cap = torch.cuda.get_device_capability(device)
        if cap < CUDA_BF16_MIN_CAPABILITY:
            return (f"{torch.cuda.get_device_name(device)} has compute capability {cap[0]}.{cap[1]} "
                    f"(bf16 tensor cores need ≥ {CUDA_BF16_MIN_CAPABILITY[0]}.{CUDA_BF16_MIN_CAPABILITY[1]})")
        return None
    if device.type == "cpu":
        text = _read_cpuinfo() if cpuinfo is None else cpuinfo
        if not text:
            return "no /proc/cpuinfo to read the CPU's bf16 support from"
        flags = cpu_flags(text)
        if any(f in flags for f in X86_BF16_FLAGS) or ("bf16" in flags and "asimd" in flags):
            return None
        return f"the CPU ({cpu_model(text)}) has no avx512_bf16/amx_bf16, so bf16 is emulated"
    return f"native bf16 is not known for device type {device.type!r}"


def native_bf16(device: torch.device | str, cpuinfo: str | None = None) -> bool:
    """Whether ``device`` multiplies bf16 natively (see the module docstring).
    ``cpuinfo``: the text of ``/proc/cpuinfo`` to parse instead of this machine's."""
    return bf16_not_native_reason(device, cpuinfo) is None


def cpu_description(cpuinfo: str | None = None) -> str:
    """One line: CPU model, logical CPUs, torch's CPU capability and the relevant
    flags, e.g. ``"AMD EPYC (2 CPUs, torch AVX2): avx2 fma; native bf16: no"``."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = cpu_flags(text)
    present = [f for f in REPORTED_FLAGS if f in flags]
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - old torch
        capability = "?"
    native = bf16_not_native_reason("cpu", text) is None
    return (f"{cpu_model(text)} ({os.cpu_count()} CPUs, {platform.machine()}, torch {capability}): "
            f"{' '.join(present) or 'no flags read'}; native bf16: {'yes' if native else 'no'}")


def resolve_bf16_solves(value, device: torch.device | str | None = None) -> bool:
    """The loss's ``bf16_solves`` setting as a bool: ``True``/``False`` as given, ``"auto"``
    = :func:`native_bf16` of ``device`` (CPU when None); anything else is a ``ValueError``.

    >>> resolve_bf16_solves(False), resolve_bf16_solves(True)
    (False, True)
    >>> resolve_bf16_solves("auto") == native_bf16("cpu")
    True
    """
    if isinstance(value, bool):
        return value
    if value == "auto":
        return native_bf16(device if device is not None else "cpu")
    raise ValueError(f"bf16_solves must be true, false or 'auto', got {value!r}")


_warned: set[tuple[str, str]] = set()


def warn_if_bf16_not_native(device: torch.device | str, what: str = "bf16") -> bool:
    """Warns once per (``what``, device type) when ``device`` has no native bf16.

    For explicit bf16 requests: the request still runs (see the module
    docstring for why this warns rather than refuses). Returns True when bf16
    is native (no warning), False otherwise.

    Example (what the lead's ``make_deflow`` does for ``bf16_solves=True``):
        >>> warn_if_bf16_not_native("cpu", what="bf16_solves")  # doctest: +SKIP
    """
    device = torch.device(device)
    reason = bf16_not_native_reason(device)
    if reason is None:
        return True
    key = (what, device.type)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"{what} on {device.type}: {reason}; it runs as asked but is likely slower than fp32 "
            "(drop the bf16 option, or use backend 'auto', which picks bf16 only where it is native)",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory this process can still allocate on ``device``: CUDA's free memory, or on a CPU the smaller of
    ``MemAvailable`` (``/proc/meminfo``) and the cgroup's limit minus its usage (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``). None where it cannot be read (another OS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f, open(usage_file) as g:
                limit, usage = f.read().strip(), g.read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:
            found.append(max(int(limit) - int(usage), 0))
        break
    return min(found) if found else None
