"""Keep a compiled update compiled: tensordict 0.14's class memo must not become a dynamo guard.

``tensordict.utils._is_tensorclass(cls)`` looks ``cls`` up in a module-level memo dict before reading
``cls._is_tensorclass``, also while dynamo traces; dynamo then guards the compiled code on the memo's
*length*. Eager tensordict code adds an entry for every class it meets for the first time, so the
first evaluation after the first compiled update (a TorchRL env, a ``SerialEnv``: new classes) fails
that guard and the whole update is compiled again. Measured on the README's quick run (2-core Zen 3,
warm inductor cache): one 100-step stretch at 5.7 updates/s instead of 32, ≈ 15 s, more with a cold
cache; every further new class (an online collector, a new env) costs another recompile, and after
``torch._dynamo.config.recompile_limit`` recompiles dynamo silently runs the update eagerly.

:func:`unguard_tensorclass_memo` makes ``_is_tensorclass`` skip the memo while compiling (a class's
``_is_tensorclass`` attribute never changes, so the answer is the same; eager calls keep the memo). The
function object is changed in place, because tensordict's modules hold it under their own names.
It applies only to the code it was written against (the memo lookup present): a tensordict that reads
the attribute directly, as newer ones may, is left untouched.
"""
from __future__ import annotations

__all__ = ["unguard_tensorclass_memo"]


def _is_tensorclass_unguarded(cls: type) -> bool:  # runs with tensordict.utils' globals (see below)
    if is_compiling():  # noqa: F821 (tensordict.utils.is_compiling)
        return getattr(cls, "_is_tensorclass", False)
    out = _TENSORCLASS_MEMO.get(cls)  # noqa: F821 (tensordict.utils._TENSORCLASS_MEMO)
    if out is None:
        out = getattr(cls, "_is_tensorclass", False)
        _TENSORCLASS_MEMO[cls] = out  # noqa: F821
    return out


def unguard_tensorclass_memo() -> bool:
    """Patch ``tensordict.utils._is_tensorclass`` once (module doc); True if it is (now) patched."""
    import tensordict.utils as tdu

    fn = getattr(tdu, "_is_tensorclass", None)
    if fn is None:
        return False
    if fn.__code__ is _is_tensorclass_unguarded.__code__:
        return True
    needed = {"_TENSORCLASS_MEMO", "is_compiling"}
    if "_TENSORCLASS_MEMO" not in fn.__code__.co_names or not needed <= set(vars(tdu)) or fn.__code__.co_freevars:
        return False  # not the code this was written for
    fn.__code__ = _is_tensorclass_unguarded.__code__
    return True
