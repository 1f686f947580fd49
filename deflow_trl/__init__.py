"""deflow_trl: DeFlow offline RL as TorchRL components.

The pieces a TorchRL user composes:

* :func:`make_deflow` — policy and loss with the reference defaults;
* :class:`DeFlowActor` — the policy (flow sample + trust-region refinement);
* :class:`DeFlowLoss` — critic, flow-matching, refiner and α losses;
* :func:`make_fql`, :class:`FQLActor`, :class:`FQLLoss` — flow Q-learning, the main baseline;
* :class:`VelocityField`, :class:`Refiner`, :class:`CriticEnsemble` — the networks;
* :func:`intrinsic_action_variance`, :func:`propose_delta` — δ from data.
"""
from deflow_trl.actor import DeFlowActor
from deflow_trl.iav import intrinsic_action_variance, propose_delta
from deflow_trl.fql import FQLActor, FQLLoss, OneStepPolicy, make_fql
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
