"""One DeFlow update step, eager or compiled: :class:`Updater` / :func:`make_update`.

A step is: loss forward → sum of the ``loss_*`` entries → backward → optimiser
step → Polyak update of the target critic (``target ← (1 − τ) target + τ source``,
the math of ``torchrl.objectives.SoftUpdate``) → the detached metrics
TensorDict. The eager path is the plain TorchRL sequence (``loss(td)``,
``backward()``, ``optimizer.step()``, ``target_updater.step()``) and is the
reference the compiled path is tested against.

``compile=True``
    The step (forward, backward, optimiser step, Polyak update) runs under
    one ``torch.compile``. Dynamo splits it into three graphs at the breaks
    PyTorch itself inserts: the loss forward (its backward compiled by
    AOTAutograd), the optimiser step, and the Polyak update (one
    ``torch._foreach_lerp_`` over the target/source pairs of the
    ``SoftUpdate``). ``zero_grad`` runs eagerly before the compiled call.
    Costs ≈ 15–50 s of cold compile on a 2-core CPU (less from a warm
    ``TORCHINDUCTOR_CACHE_DIR``). Measured (``benchmarks/update_throughput.py
    --threads 1``, batch 256, K = 10): 2×64 MLPs 5.6 → 4.1 ms (1.36×);
    reference 4×512 194 → 182 ms (1.07×; GEMM-bound, ≈ 75–80 % of the
    machine's fp32 GEMM rate already in eager). With the loss's
    ``bf16_solves=True`` the reference step is 126 ms (1.54× over eager fp32).
    Keep the loss's sampler on ``backend="eager"`` inside a compiled update:
    the whole step is compiled anyway, and a ``"compile"`` sampler backend
    splits the loss graph around its own compiled unit (correct, slower).

``cudagraphs`` (CUDA only; **untested in this project so far**: no GPU was
    available when it was written). The compiled step, with ``zero_grad``
    inside it, is captured by :class:`tensordict.nn.CudaGraphModule` after
    ``warmup`` eager-compiled calls. Preconditions (``CudaGraphModule``'s):
    a fixed batch size and device; Adam with ``capturable=True`` (set here on
    a fresh optimiser, an error otherwise); inputs that do not require grad.

Preconditions and what to do when they fail:

* Fixed batch size. A new batch size recompiles once (dynamo then marks the
  batch dimension dynamic); drop the last partial batch (the TorchRL replay
  buffers' samplers do by default).
* The loss's input checks (``check_inputs``) are skipped inside compiled code;
  the first batch is therefore run through the loss's checks eagerly
  (``validate`` below) before the first compiled call.
* RNG: inside a compiled graph ``torch.randn``/``torch.rand`` come from
  inductor's own generator, not torch's. A compiled step therefore draws the
  loss's noise *eagerly*, before the graph, with the loss's
  :meth:`~deflow_trl.loss.FlowCriticLoss.draw_noise` (the forward's random
  tensors in its order) and hands it in under the reserved key ``"_noise"``:
  compiled and eager steps from one ``torch.manual_seed`` consume the same random
  numbers (tested), and a seed of a :class:`~deflow_trl.seeds.SeedGroup`
  reproduces a compiled lone run. A loss without ``draw_noise`` still draws in
  the graph (``compile_options={"options": {"fallback_random": True}}`` makes
  that eager's stream too).
* Graph breaks / recompiles: debug with ``TORCH_LOGS=graph_breaks,recompiles``.
  The expected breaks are ``Tensor.backward()`` and the two inside
  ``Optimizer.step`` (PyTorch's own); anything else is a regression.
* Target update: a :class:`~torchrl.objectives.SoftUpdate` is fused into the
  compiled step; any other ``TargetNetUpdater`` (e.g. ``HardUpdate``) is
  called eagerly after it. The fused update holds the parameters' storages:
  build the ``Updater`` after moving the loss to its device (``load_state_dict``
  later is fine: it copies in place).
* CPU inductor option: see :data:`CPU_INDUCTOR_OPTIONS` (added unless
  ``compile_options`` sets ``mode``, which ``torch.compile`` does not accept
  together with ``options``).

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from torchrl.objectives import SoftUpdate
    >>> from deflow_trl import make_deflow
    >>> from deflow_trl.update import make_update
    >>> policy, loss = make_deflow(4, 2, hidden_sizes=(32, 32))
    >>> optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    >>> update = make_update(loss, optim, SoftUpdate(loss, tau=0.005), compile=False)
    >>> B = 8
    >>> batch = TensorDict({
    ...     "observation": torch.randn(B, 4), "action": torch.rand(B, 2) * 2 - 1,
    ...     "next": {"observation": torch.randn(B, 4), "reward": torch.randn(B, 1),
    ...              "done": torch.zeros(B, 1, dtype=torch.bool),
    ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
    ... }, batch_size=[B])
    >>> metrics = update(batch)
    >>> float(metrics["loss_qvalue"]) >= 0, metrics["loss_flow"].requires_grad
    (True, False)
"""
from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import TargetNetUpdater

from deflow_trl.backends import CPU_INDUCTOR_OPTIONS
from deflow_trl.compile_compat import unguard_tensorclass_memo
from deflow_trl.loss import NOISE_KEY


def _total_loss(out: TensorDictBase) -> torch.Tensor:
    """Sum of the ``loss_*`` entries (TorchRL's convention)."""
    losses = [out.get(key) for key in out.keys() if isinstance(key, str) and key.startswith("loss_")]
    if not losses:
        raise KeyError(f"the loss returned no 'loss_*' entry (keys: {list(out.keys())})")
    return sum(losses[1:], losses[0])


def _polyak_pairs(loss: LossModule) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(targets, sources)``: the ``.data`` of every target/online parameter pair
    of ``loss``, read from its public ``target_<name>_params`` /
    ``<name>_params`` TensorDicts (what ``SoftUpdate`` updates)."""
    targets, sources = [], []
    for name, target_params in loss.named_children():
        if not (name.startswith("target_") and name.endswith("_params")):
            continue
        source_params = getattr(loss, name[len("target_"):])
        for key, target in target_params.items(True, True):
            source = source_params.get(key)
            if target is source:  # a target that is the online value itself (no delayed copy)
                continue
            targets.append(target.data)
            sources.append(source.data)
    return targets, sources


class Updater:
    """Performs one full DeFlow update step per call (see the module docstring).

    Args:
        loss: the loss module (any TorchRL ``LossModule`` returning ``loss_*``
            entries; made for :class:`~deflow_trl.loss.DeFlowLoss`).
        optimizer: one optimiser over ``loss.parameters()`` (Adam, lr 3e-4 in
            the reference).
        target_updater: the ``SoftUpdate(loss, tau=0.005)`` of the target
            critic, another ``TargetNetUpdater``, or ``None`` if the caller
            updates the targets itself.

    Keyword Args:
        compile (bool): run the step under ``torch.compile`` (default False).
            Set :attr:`compile` to ``False`` at any time to go back to eager
            (the compiled function is kept and reused if switched on again).
        cudagraphs (bool, optional): also capture the compiled step in a CUDA
            graph; default: True when ``compile`` and the loss lives on CUDA.
            Untested on GPU in this project (none was available).
        compile_options (dict, optional): extra keyword arguments of
            ``torch.compile`` (``mode``, ``dynamic``, ``options``...).
        warmup (int): compiled calls before the CUDA graph capture (default 3).
        validate (bool): run the loss's input checks eagerly on the first batch
            of a compiled updater (default True).

    Returns (from ``__call__``): the loss's output TensorDict, detached
    (``loss_*`` entries and metrics).
    """

    def __init__(
        self,
        loss: LossModule,
        optimizer: torch.optim.Optimizer,
        target_updater: TargetNetUpdater | None,
        *,
        compile: bool = False,
        cudagraphs: bool | None = None,
        compile_options: dict[str, Any] | None = None,
        warmup: int = 3,
        validate: bool = True,
    ) -> None:
        if target_updater is not None and target_updater.loss_module is not loss:
            raise ValueError("target_updater was built for another loss module")
        self.loss = loss
        self.optimizer = optimizer
        self.target_updater = target_updater
        self.compile = compile
        self.compile_options = dict(compile_options or {})
        self.warmup = warmup
        self.validate = validate
        device = next(loss.parameters()).device
        self.cudagraphs = (compile and device.type == "cuda") if cudagraphs is None else cudagraphs
        if self.cudagraphs and device.type != "cuda":
            raise ValueError("cudagraphs=True needs the loss on a CUDA device")
        if isinstance(target_updater, SoftUpdate):
            self._tau = 1.0 - target_updater.eps
            self._targets, self._sources = _polyak_pairs(loss)
        else:
            self._tau, self._targets, self._sources = None, [], []
        self._compiled = None
        self._validated = False
        self.eager_noise = True  # compiled steps draw the loss's noise eagerly (module docstring, "RNG")

    # -- the eager reference ------------------------------------------------
    def eager_step(self, batch: TensorDictBase) -> TensorDictBase:
        """The plain TorchRL step, never compiled."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss(batch)
        _total_loss(out).backward()
        self.optimizer.step()
        if self.target_updater is not None:
            self.target_updater.step()
        return out.detach()

    # -- the compiled step ----------------------------------------------------
    def _step(self, batch: TensorDictBase) -> TensorDictBase:
        """Forward, backward, optimiser step and the fused Polyak update (the
        function handed to ``torch.compile``; ``zero_grad`` is outside, except
        under CUDA graphs where every op must be inside the captured call)."""
        if self.cudagraphs:
            self.optimizer.zero_grad(set_to_none=True)
        out = self.loss(batch)
        _total_loss(out).backward()
        self.optimizer.step()
        if self._tau is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self._targets, self._sources, self._tau)
        return out.detach()

    def _build(self) -> None:
        # Attributes a loss sets lazily on its first call would change under
        # dynamo's guards and recompile the step: materialise them first.
        getattr(self.loss, "in_keys", None)
        kwargs = dict(self.compile_options)
        if kwargs.get("mode") is None:  # torch.compile takes mode or options, not both
            kwargs.pop("mode", None)
            if kwargs.get("backend", "inductor") == "inductor":  # the options are inductor's
                kwargs["options"] = {**CPU_INDUCTOR_OPTIONS, **kwargs.get("options", {})}
        unguard_tensorclass_memo()  # else every class tensordict meets later (an evaluation) recompiles the step
        fn = torch.compile(self._step, **kwargs)
        if self.cudagraphs:
            from tensordict.nn import CudaGraphModule

            for group in self.optimizer.param_groups:
                if not group.get("capturable", True):
                    if self.optimizer.state:
                        raise ValueError(
                            "cudagraphs needs an optimiser built with capturable=True "
                            "(it can be switched on only before the first step)"
                        )
                    group["capturable"] = True
            fn = CudaGraphModule(fn, warmup=self.warmup, in_keys=[], out_keys=[])
        self._compiled = fn

    def check(self, batch: TensorDictBase) -> None:
        """The loss's eager input checks on ``batch`` (keys, shapes, finiteness,
        action range), without running the loss."""
        read = getattr(self.loss, "read_batch", None)
        if read is not None and getattr(self.loss, "check_inputs", False):
            with torch.no_grad():
                read(batch)

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        if not self.compile:
            return self.eager_step(batch)
        if self.validate and not self._validated:
            self.check(batch)
            self._validated = True
        if self._compiled is None:
            self._build()
        if not self.cudagraphs:
            self.optimizer.zero_grad(set_to_none=True)
        noise = self._eager_noise(batch)
        if noise is None:
            out = self._compiled(batch)
        else:  # the loss reads it instead of drawing inside the graph; taken out again (the batch is the caller's)
            batch.set(NOISE_KEY, noise)
            try:
                out = self._compiled(batch)
            finally:
                batch.del_(NOISE_KEY)
        if self._tau is None and self.target_updater is not None:
            self.target_updater.step()
        return out

    def _eager_noise(self, batch: TensorDictBase) -> TensorDictBase | None:
        """The loss's random tensors for this step, drawn eagerly from torch's generator in the order its forward
        would draw them (``draw_noise_for``), so a compiled step consumes the eager step's random numbers; None for a
        loss without ``draw_noise``, a batch that brings its own, or ``eager_noise=False``."""
        draw = getattr(self.loss, "draw_noise_for", None)
        if not self.eager_noise or draw is None or NOISE_KEY in batch.keys():
            return None
        return draw(batch)


def make_update(
    loss: LossModule,
    optimizer: torch.optim.Optimizer,
    target_updater: TargetNetUpdater | None,
    *,
    compile: bool = False,
    **kwargs: Any,
) -> Updater:
    """An :class:`Updater` (``update(batch) → metrics``); keyword arguments as
    :class:`Updater`'s."""
    return Updater(loss, optimizer, target_updater, compile=compile, **kwargs)
