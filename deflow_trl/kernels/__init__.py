"""Triton kernels for the DeFlow ODE sampler (``FlowSampler(backend="triton")``).

``TRITON_AVAILABLE`` says whether ``triton`` imports. The kernels themselves
live in :mod:`deflow_trl.kernels.flow_triton` and are imported on first use,
so that ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests)
is honoured when it is set before that first use. See that module's
docstring for what runs when and the known limits.
"""
from __future__ import annotations

try:  # pragma: no cover - depends on the install
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    TRITON_AVAILABLE = True
except Exception:  # ImportError, or a broken install
    TRITON_AVAILABLE = False


def triton_sample(*args, **kwargs):
    """See :func:`deflow_trl.kernels.flow_triton.triton_sample`."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("backend 'triton' needs the triton package (pip install deflow_trl[triton])")
    from deflow_trl.kernels.flow_triton import triton_sample as impl  # lazy: Triton is optional

    return impl(*args, **kwargs)


__all__ = ["TRITON_AVAILABLE", "triton_sample"]
