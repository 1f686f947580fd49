"""Several seeds in one process: :class:`SeedGroup` trains G copies of one loss
with their parameters stacked on a leading seed dimension, under ``torch.vmap``.

Each seed computes what a lone run with that seed computes (the plain
:class:`~deflow_trl.update.Updater`, eager), to float tolerance:

* **Same start.** The G losses are built the way a lone run builds its loss
  (:meth:`SeedGroup.build`: ``torch.manual_seed(s)``, then the factory), and
  their parameters and buffers are stacked as they are.
* **Same random numbers.** The group keeps one RNG state per seed (torch's CPU
  generator, and the loss device's CUDA generator) and swaps it in around that
  seed's batch sampling and its noise draw
  (:meth:`~deflow_trl.loss.FlowCriticLoss.draw_noise`, the loss's random
  tensors in the order its ``forward`` draws them); the noise reaches the loss
  under the reserved input key ``"_noise"``, so the vmapped forward draws
  nothing itself (``vmap(..., randomness="error")`` checks that). Seed ``s``
  thus consumes exactly the numbers a lone run of seed ``s`` consumes, in the
  same order; the caller's own RNG state is restored afterwards.
* **Same update.** The G total losses are summed (seed ``s``'s parameters get
  seed ``s``'s gradient only), one optimiser steps the stacked leaves — Adam,
  AdamW or SGD are elementwise, so one optimiser over ``[G, ...]`` tensors is
  G independent optimisers with the same hyperparameters (an optimiser with a
  per-tensor norm, e.g. LAMB, is not) — and the Polyak update
  ``target ← (1 − τ) target + τ source`` runs on the stacked targets (one
  ``torch._foreach_lerp_``, as the compiled :class:`~deflow_trl.update.Updater`).

The difference from lone runs is float re-association: vmapped matmuls over
``[G, B, ...]`` may sum in another order than ``[B, ...]`` ones. Measured
(``tests/test_seeds.py``: hidden (16, 16), K = 2, batch 32, 200 updates, 2
seeds, 2-core CPU): the first step bit-identical, per-step losses within
4.4e-5 relative, final weights within 4e-7 relative.

Speed (``benchmarks/seed_throughput.py``, eager, one thread, shared 2-core
CPU, indicative): with the README main run's 2×256 networks a group is about as
fast per seed-update as lone runs one after another (the step is GEMM-bound;
G = 1 pays ≈ 25 % for vmap); with tiny networks, where Python overhead
dominates, 8 seeds run 2× faster together. The point on a CPU is one process
(one dataset in memory, one launch) for G seeds, not speed.

The losses handed in stay usable: each of their parameters and buffers is made
a view of its seed's slice of the stacked tensor (``.data`` is rebound), so
evaluating ``group.losses[i].actor`` or saving ``group.losses[i].state_dict()``
sees seed ``i``'s current weights with no copy. The forward itself runs on a
private copy of the first loss (``template``): ``TensorDict.to_module`` under
``vmap`` drops ``requires_grad`` from the parameters it restores, which must
not happen to the caller's modules.

Preconditions: losses of one architecture and configuration (checked: one
clear error naming the first difference), the sampler's ``"eager"`` backend,
no ``bf16_solves``, ``reduction`` ``"mean"`` or ``"sum"``.

Eager only. ``torch.compile`` of the group step was tried (tensordict 0.14.3,
torch 2.13, CPU) and not kept: it gives the same numbers (≤ 1e-6) but is no
faster (hidden (16, 16), 2 seeds: 8.7 ms compiled vs 7.3 ms eager per
update), because dynamo breaks in ``TensorDict.to_module`` under ``vmap``
(a ``TensorDictParams`` is constructed, ``tensordict/nn/params.py``) and
skips ~100 tensordict frames (``_add_batch_dim``...), whether the vmapped
function takes TensorDicts or flat dicts of tensors. A compiled group needs a
forward that swaps plain tensors in (``torch.func.functional_call``) rather
than ``to_module``.

Examples:
    >>> import torch
    >>> from tensordict import TensorDict
    >>> from deflow_trl import make_deflow
    >>> group = SeedGroup.build([0, 1], lambda: make_deflow(4, 2, hidden_sizes=(8, 8), num_flow_steps=2)[1])
    >>> data = TensorDict({
    ...     "observation": torch.randn(64, 4), "action": torch.rand(64, 2) * 2 - 1,
    ...     "next": {"observation": torch.randn(64, 4), "reward": torch.randn(64, 1),
    ...              "done": torch.zeros(64, 1, dtype=torch.bool),
    ...              "terminated": torch.zeros(64, 1, dtype=torch.bool)},
    ... }, batch_size=[64])
    >>> metrics = group.update(lambda: data[torch.randint(0, 64, (16,))])
    >>> metrics["loss_qvalue"].shape  # one value per seed
    torch.Size([2])
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule

from deflow_trl.loss import NOISE_KEY
from deflow_trl.update import _polyak_pairs, _total_loss


class RngStreams:
    """One saved state of torch's generators per seed (the CPU generator, plus
    the CUDA generator of ``device`` when it is a CUDA device).

    ``with streams.use(i):`` runs its body on stream ``i`` (its state swapped
    in, advanced by the body, saved back) and restores the caller's state.
    """

    def __init__(self, states: Sequence[tuple[torch.Tensor, torch.Tensor | None]], device: torch.device) -> None:
        self.states = list(states)
        self.device = device

    @staticmethod
    def capture(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The current state of the generators a run on ``device`` draws from."""
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def use(self, i: int) -> _Swap:
        return _Swap(self, i)


class _Swap:
    def __init__(self, streams: RngStreams, i: int) -> None:
        self.streams, self.i = streams, i

    def __enter__(self) -> None:
        self.outer = RngStreams.capture(self.streams.device)
        self.streams._set(self.streams.states[self.i])

    def __exit__(self, *exc) -> None:
        self.streams.states[self.i] = RngStreams.capture(self.streams.device)
        self.streams._set(self.outer)


def duplicate_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds that appear more than once in ``seeds``, sorted (a group trains each seed once)."""
    seeds = list(seeds)
    return sorted({s for s in seeds if seeds.count(s) > 1})


def _same(a, b) -> bool:
    return bool(torch.equal(a, b)) if torch.is_tensor(a) and torch.is_tensor(b) else a == b


def _config(module: torch.nn.Module) -> list[tuple[str, object]]:
    """The plain settings (numbers, strings, flags) of ``module`` and its submodules."""
    plain = (bool, int, float, str, type(None))
    out = []
    for name, sub in module.named_modules():
        for key, value in sorted(vars(sub).items()):
            if isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value)):
                out.append((f"{name}.{key}" if name else key, value))
    return out


def _signature(loss: torch.nn.Module) -> list[tuple]:
    tensors = [("parameter", n, tuple(p.shape), p.dtype, p.device) for n, p in loss.named_parameters()]
    tensors += [("buffer", n, tuple(b.shape), b.dtype, b.device) for n, b in loss.named_buffers()]
    return [("type", type(loss).__name__)] + tensors + _config(loss)


def _check_losses(losses: Sequence[LossModule], seeds: Sequence[int]) -> None:
    if len(losses) == 0:
        raise ValueError("SeedGroup needs at least one seed (got an empty list)")
    if len(seeds) != len(losses):
        raise ValueError(f"SeedGroup: {len(seeds)} seeds for {len(losses)} losses")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"SeedGroup: duplicate seeds {duplicate_seeds(seeds)} (each seed once)")
    if len({id(loss) for loss in losses}) != len(losses):
        raise ValueError("SeedGroup: the same loss object appears twice; build one loss per seed")
    first = _signature(losses[0])
    for seed, loss in zip(seeds[1:], losses[1:]):
        other = _signature(loss)
        if other != first:
            diff = next((a, b) for a, b in zip(first + [None], other + [None]) if a != b)
            raise ValueError(
                f"SeedGroup: the loss of seed {seed} differs from seed {seeds[0]}'s (architecture or settings): "
                f"{diff[1]} vs {diff[0]}"
            )
    loss = losses[0]
    sampler = getattr(getattr(loss, "actor", None), "sampler", None)
    if sampler is not None and sampler.backend != "eager":
        raise ValueError(f"SeedGroup needs the sampler's 'eager' backend (got {sampler.backend!r}) inside vmap")
    if getattr(loss, "bf16_solves", False):
        raise ValueError("SeedGroup: bf16_solves is not supported (untested under vmap)")
    if getattr(loss, "reduction", "mean") == "none":
        raise ValueError("SeedGroup needs reduction 'mean' or 'sum' (scalar losses per seed)")
    if not hasattr(loss, "draw_noise"):
        raise TypeError(f"SeedGroup needs a loss with draw_noise (a FlowCriticLoss), got {type(loss).__name__}")


class SeedGroup:
    """G seeds of one loss trained together (see the module docstring).

    Args:
        losses: one loss per seed, of identical architecture and settings
            (e.g. ``make_deflow(...)[1]`` built after ``torch.manual_seed(s)``).
        seeds: the seeds' names (ints), one per loss, distinct.

    Keyword Args:
        rng_states: each seed's generator state to draw batches and noise from
            (default: ``torch.manual_seed(seed)`` states; :meth:`build` passes
            the states right after each loss was built, as a lone run has them).
        optimizer: ``params → optimizer`` over the stacked leaves (default
            Adam, lr 3e-4: the reference's); elementwise optimisers only.
        tau: the Polyak rate of the target critic (0.005), or ``None``: no
            target update.
        flow_only: train the behaviour flow alone (``loss.flow_loss``, the
            flow-BC baseline's update; pass ``tau=None``): each seed draws only
            that loss's noise, as a lone flow-BC run does.

    Attributes:
        losses: the losses handed in, their tensors now views of the stacked ones.
        params: the stacked leaves, ``{name: [G, ...]}`` (parameters and buffers
            by the loss's deduplicated names).
        optimizer: the one optimiser over the stacked parameters.
    """

    def __init__(
        self,
        losses: Sequence[LossModule],
        seeds: Sequence[int],
        *,
        rng_states: Sequence[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
        optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
        tau: float | None = 0.005,
        flow_only: bool = False,
    ) -> None:
        losses, seeds = list(losses), [int(s) for s in seeds]
        self.flow_only = flow_only
        _check_losses(losses, seeds)
        self.losses, self.seeds = losses, seeds
        self.device = next(losses[0].parameters()).device
        if rng_states is None:
            outer = RngStreams.capture(self.device)
            rng_states = []
            for s in seeds:
                torch.manual_seed(s)
                rng_states.append(RngStreams.capture(self.device))
            RngStreams(rng_states, self.device)._set(outer)
        if len(rng_states) != len(seeds):
            raise ValueError(f"SeedGroup: {len(rng_states)} RNG states for {len(seeds)} seeds")
        self.rng = RngStreams(rng_states, self.device)
        self.template = copy.deepcopy(losses[0])  # runs every forward (see the module docstring)
        self.template.check_inputs = False  # checked eagerly on the first batch instead (data-dependent)
        self.params = self._stack()
        self.optimizer = (optimizer or (lambda p: torch.optim.Adam(p, lr=3e-4)))(
            [p for p in self.params.values() if isinstance(p, torch.nn.Parameter)]
        )
        self.tau = tau
        self._targets, self._sources = self._polyak()
        self._validated = False
        self._vmapped = torch.vmap(self._one_seed, (0, 0), randomness="error")

    # -- stacking ------------------------------------------------------------------
    def _stack(self) -> dict[str, torch.Tensor]:
        """Stacked leaves by deduplicated name; every loss's tensors rebound to views of its slice."""
        stacked = {}
        for name, _ in self.losses[0].named_parameters():
            per_seed = [loss.get_parameter(name) for loss in self.losses]
            leaf = torch.nn.Parameter(torch.stack([p.detach() for p in per_seed]))
            leaf.requires_grad_(per_seed[0].requires_grad)
            stacked[name] = leaf
        for name, _ in self.losses[0].named_buffers():
            stacked[name] = torch.stack([loss.get_buffer(name).detach() for loss in self.losses])
        for i, loss in enumerate(self.losses):
            loss.__dict__.pop("_cache", None)  # torchrl's cached detached params would keep the old storage
            for name, t in [*loss.named_parameters(), *loss.named_buffers()]:
                t.data = stacked[name].data[i]  # aliases (tied names) share the tensor: rebound once, seen by all
        # The forward's TensorDict: every key of the template, tied ones mapped to the same stacked leaf.
        # (read off the first loss: a deepcopy may untie what the original ties)
        names = {id(t): n for n, t in [*self.losses[0].named_parameters(), *self.losses[0].named_buffers()]}
        full = TensorDict.from_module(self.losses[0])
        self._state = TensorDict(
            {key: stacked[names[id(t)]] for key, t in full.items(True, True)}, batch_size=[len(self.seeds)]
        )
        return stacked

    def _polyak(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.tau is None:
            return [], []
        targets, sources = _polyak_pairs(self.losses[0])
        if not targets:
            raise ValueError(f"SeedGroup: {type(self.losses[0]).__name__} has no target parameters; pass tau=None")
        # The losses' tensors are views of slice 0.. of the stacked leaves: find each leaf by seed 0's storage.
        by_ptr = {p.data_ptr(): name for name, p in self.params.items()}

        def leaf(t: torch.Tensor) -> torch.Tensor:
            return self.params[by_ptr[t.data_ptr()]].data

        return [leaf(t) for t in targets], [leaf(s) for s in sources]

    # -- one step --------------------------------------------------------------------
    def draw(self, sample: Callable[[], TensorDictBase] | Sequence[Callable[[], TensorDictBase]]) -> TensorDictBase:
        """The stacked ``[G, *B]`` batch: for each seed, on its own RNG stream,
        ``sample()`` (or ``sample[i]()``) then the loss's noise for it."""
        samplers = list(sample) if isinstance(sample, (list, tuple)) else [sample] * len(self.seeds)
        if len(samplers) != len(self.seeds):
            raise ValueError(f"SeedGroup.draw: {len(samplers)} samplers for {len(self.seeds)} seeds")
        batches = []
        for i, (loss, fn) in enumerate(zip(self.losses, samplers)):
            with self.rng.use(i):
                batch = fn()
                noise = loss.draw_noise_for(batch, flow_only=self.flow_only)
            batches.append(batch.set(NOISE_KEY, noise))
        return torch.stack(batches)

    def _one_seed(self, state: TensorDictBase, batch: TensorDictBase) -> TensorDictBase:
        loss = self.template
        loss.__dict__.pop("_cache", None)  # torchrl caches detached params per module: not across seeds
        with state.to_module(loss):
            if self.flow_only:
                out = TensorDict({"loss_flow": loss.flow_loss(batch)[0]}, [])
            else:
                out = loss(batch)
        loss.__dict__.pop("_cache", None)
        if self.flow_only:
            return out, torch.zeros(batch.batch_size)  # flow matching has no TD error
        # what the loss wrote into its input (the per-sample TD error) does not leave vmap by itself
        return out, batch.get(loss.tensor_keys.priority)

    def forward(self, batch: TensorDictBase) -> TensorDictBase:
        """The G losses' outputs (``[G]`` entries, with grad) on a stacked batch from :meth:`draw`;
        writes each seed's per-sample TD error into ``batch`` (``[G, *B]``, the loss's priority key)."""
        return self._forward(self._checked(batch))

    def _forward(self, batch: TensorDictBase) -> TensorDictBase:
        out, priority = self._vmapped(self._state, batch)
        if not self.flow_only:
            batch.set(self.template.tensor_keys.priority, priority)
        return out

    def _checked(self, batch: TensorDictBase) -> TensorDictBase:
        """``batch``, after its shape checks and, on the first call, each seed's input checks (eager)."""
        if batch.batch_size[:1] != torch.Size([len(self.seeds)]):
            raise ValueError(f"SeedGroup: the batch must be stacked over the {len(self.seeds)} seeds, "
                             f"got batch_size {list(batch.batch_size)} (use draw)")
        if NOISE_KEY not in batch.keys():
            raise KeyError(f"SeedGroup: the batch has no {NOISE_KEY!r} entry (use draw)")
        if not self._validated:
            for loss, one in zip(self.losses, batch.unbind(0)):
                if getattr(loss, "check_inputs", False):
                    with torch.no_grad():
                        loss.flow_loss(one) if self.flow_only else loss.read_batch(one)
            self._validated = True
        return batch

    def step(self, batch: TensorDictBase) -> TensorDictBase:
        """One update of every seed on a stacked batch from :meth:`draw`; the detached ``[G]`` metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        return self._step(self._checked(batch))

    def _step(self, batch: TensorDictBase) -> TensorDictBase:
        out = self._forward(batch)
        _total_loss(out).sum().backward()
        self.optimizer.step()
        if self._targets:
            with torch.no_grad():
                torch._foreach_lerp_(self._targets, self._sources, self.tau)
        return out.detach()

    def update(self, sample: Callable[[], TensorDictBase] | Sequence[Callable[[], TensorDictBase]]) -> TensorDictBase:
        """:meth:`draw` then :meth:`step`."""
        return self.step(self.draw(sample))

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed group needs to continue exactly: the seeds, the
        stacked parameters and buffers, the optimiser's state and each seed's RNG
        state (seed ``i``'s own slice is also ``losses[i].state_dict()``)."""
        return {
            "seeds": list(self.seeds),
            "params": {name: t.detach().clone() for name, t in self.params.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not the live moments
            "rng": [tuple(x if x is None else x.clone() for x in state) for state in self.rng.states],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s output into this group (same seeds, same architecture), in place."""
        if list(state["seeds"]) != self.seeds:
            raise ValueError(f"SeedGroup.load_state_dict: the checkpoint holds seeds {state['seeds']}, "
                             f"this group {self.seeds}")
        missing = sorted(set(self.params) ^ set(state["params"]))
        if missing:
            raise ValueError(f"SeedGroup.load_state_dict: parameters differ from the checkpoint's: {missing[:5]}")
        with torch.no_grad():
            for name, t in self.params.items():
                t.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.states = [tuple(state_i) for state_i in state["rng"]]

    # -- one seed's optimiser state, in a lone run's layout --------------------------------
    def optimizer_state_dict(self, i: int) -> dict:
        """Seed ``i``'s slice of the optimiser's state, laid out as a lone run's
        ``torch.optim.Optimizer(loss.parameters()).state_dict()`` (the same parameter
        indices: the stacked leaves are in ``loss.named_parameters()`` order). Per-element
        entries (Adam's moments, SGD's momentum) are sliced; ``step`` is shared by all seeds."""
        full = self.optimizer.state_dict()
        def one(k, v):  # copies: an optimiser's state_dict hands out its live tensors
            if not torch.is_tensor(v):
                return v
            return v.clone() if k == "step" else v[i].clone()

        state = {idx: {k: one(k, v) for k, v in entry.items()} for idx, entry in full["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}

    def load_optimizer_state_dicts(self, states: Sequence[dict]) -> None:
        """The inverse of :meth:`optimizer_state_dict`: one lone-layout state per seed, stacked into the
        group's optimiser (e.g. lone checkpoints resumed as a group). The seeds' ``step`` counts and
        hyperparameters must agree (they do for checkpoints of one group or of lone runs at one step)."""
        if len(states) != len(self.seeds):
            raise ValueError(f"SeedGroup: {len(states)} optimiser states for {len(self.seeds)} seeds")
        first = states[0]
        groups = [[{k: v for k, v in g.items() if k != "params"} for g in s["param_groups"]] for s in states]
        if any(g != groups[0] for g in groups):
            raise ValueError("SeedGroup: the seeds' optimiser settings differ (learning rate, betas...)")
        stacked = {}
        for idx in first["state"]:
            entries = [s["state"].get(idx) for s in states]
            if any(e is None for e in entries):
                raise ValueError(f"SeedGroup: optimiser state of parameter {idx} missing for some seeds")
            one = {}
            for k, v in entries[0].items():
                if k == "step" or not torch.is_tensor(v):
                    if any(not _same(e[k], v) for e in entries):
                        raise ValueError(f"SeedGroup: the seeds' optimisers are at different steps ({k} of parameter "
                                         f"{idx}: {[float(e[k]) for e in entries]})")
                    one[k] = v
                else:
                    one[k] = torch.stack([e[k] for e in entries])
            stacked[idx] = one
        full = self.optimizer.state_dict()
        for g, saved in zip(full["param_groups"], first["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.optimizer.load_state_dict({"state": stacked, "param_groups": full["param_groups"]})

    @classmethod
    def build(cls, seeds: Sequence[int], make_loss: Callable[[], LossModule], **kwargs) -> SeedGroup:
        """One loss per seed, each built right after ``torch.manual_seed(seed)``
        (as a lone run builds it), with that seed's RNG stream continuing from
        there; the caller's RNG state is restored."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("SeedGroup needs at least one seed (got an empty list)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"SeedGroup: duplicate seeds {duplicate_seeds(seeds)}")
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        losses, states = [], []
        for s in seeds:
            torch.manual_seed(s)
            losses.append(make_loss())
            states.append(RngStreams.capture(next(losses[-1].parameters()).device))
        torch.set_rng_state(outer)
        if outer_cuda is not None:
            torch.cuda.set_rng_state_all(outer_cuda)
        return cls(losses, seeds, rng_states=states, **kwargs)


def estimate_bytes_per_seed(loss: LossModule, batch: TensorDictBase) -> int:
    """Memory one seed of a :class:`SeedGroup` needs on its device, before training: its parameters and
    buffers four times over (weights, gradients, two Adam moments) plus the tensors one update keeps for its
    backward pass at ``batch``'s size. Those are counted (``saved_tensors_hooks``) in an eager forward and
    backward of ``loss`` on slices of 4 and 8 samples and extrapolated linearly; nothing of ``loss`` changes
    (gradients reset, RNG state restored). Transient no-grad tensors (the ODE solve's) are not counted."""
    def saved_bytes(n: int) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = loss(batch[:n].clone())
            _total_loss(out).backward()
        for p in loss.parameters():
            p.grad = None
        return total

    small, large = saved_bytes(4), saved_bytes(8)
    per_sample = max(large - small, 0) / 4
    activations = small + per_sample * (batch.shape[0] - 4)
    state = sum(t.numel() * t.element_size() for t in [*loss.parameters(), *loss.buffers()])
    return int(4 * state + activations)

