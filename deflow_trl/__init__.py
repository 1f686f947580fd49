"""deflow_trl: DeFlow offline RL as TorchRL components.

The pieces a TorchRL user composes:

* :func:`make_deflow` — policy and loss with the reference defaults;
* :class:`DeFlowActor` — the policy (flow sample + trust-region refinement);
* :class:`DeFlowLoss` — critic, flow-matching, refiner and α losses;
* :func:`make_fql`, :class:`FQLActor`, :class:`FQLLoss` — flow Q-learning, the main baseline;
* :class:`VelocityField`, :class:`Refiner`, :class:`CriticEnsemble` — the networks;
* :func:`intrinsic_action_variance`, :func:`propose_delta` — δ from data (need scipy, imported on first use).

The core above needs only torch, tensordict, torchrl and numpy (``pip install deflow_trl``);
the Hydra app, OGBench data/envs, plots and the console scripts (``deflow-train``,
``deflow-generate``, ``deflow-iav``, ``deflow-summarize``) need the ``app`` extra
(``pip install 'deflow_trl[app]'``). Importing this package sets no environment variable,
warning filter or logging level: the apps do that at their entry points only.

Example (core only):
    >>> from deflow_trl import make_deflow
    >>> policy, loss = make_deflow(4, 2, hidden_sizes=(8, 8))
    >>> type(loss).__name__
    'DeFlowLoss'
"""
from typing import TYPE_CHECKING, Any

from deflow_trl.extras import INSTALL_APP, MissingExtra

if TYPE_CHECKING:  # every public name is imported on first use (module __getattr__ below)
    from deflow_trl.actor import DeFlowActor
    from deflow_trl.fql import FQLActor, FQLLoss, OneStepPolicy, make_fql
    from deflow_trl.iav import intrinsic_action_variance, propose_delta
    from deflow_trl.loss import DeFlowLoss, FlowCriticLoss
    from deflow_trl.make import make_deflow
    from deflow_trl.nets import CriticEnsemble, Refiner, VelocityField
    from deflow_trl.sampler import FlowSampler, solve_flow

__all__ = [
    "CriticEnsemble",
    "DeFlowActor",
    "DeFlowLoss",
    "FQLActor",
    "FQLLoss",
    "FlowCriticLoss",
    "OneStepPolicy",
    "FlowSampler",
    "Refiner",
    "VelocityField",
    "intrinsic_action_variance",
    "make_deflow",
    "make_fql",
    "propose_delta",
    "solve_flow",
]
__version__ = "0.1.0"

# Imported on first use, so `import deflow_trl.app.summarize` (CSV + matplotlib) does not pay for torch, and
# `import deflow_trl` needs no scipy (δ from data, app extra).
_LAZY = {
    "DeFlowActor": "deflow_trl.actor",
    "FQLActor": "deflow_trl.fql", "FQLLoss": "deflow_trl.fql", "OneStepPolicy": "deflow_trl.fql", "make_fql": "deflow_trl.fql",
    "intrinsic_action_variance": "deflow_trl.iav", "propose_delta": "deflow_trl.iav",
    "DeFlowLoss": "deflow_trl.loss", "FlowCriticLoss": "deflow_trl.loss",
    "make_deflow": "deflow_trl.make",
    "CriticEnsemble": "deflow_trl.nets", "Refiner": "deflow_trl.nets", "VelocityField": "deflow_trl.nets",
    "FlowSampler": "deflow_trl.sampler", "solve_flow": "deflow_trl.sampler",
}


def __getattr__(name: str) -> Any:
    """Imports the names of :data:`_LAZY` on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'deflow_trl' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    except ModuleNotFoundError as err:
        if _LAZY[name] != "deflow_trl.iav":  # a core dependency is missing: not the app extra's business
            raise

        package = (err.name or "a package").split(".")[0]
        raise MissingExtra(f"deflow_trl.{name} needs {package}, which is not installed: {INSTALL_APP}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
