"""AGVM: per-component learning rates from the gradient variance of each module (Xue et al. 2022).

At large batch, a model's components (backbone, neck, heads) see very different gradient noise;
AGVM keeps them in step by giving every component k its own LR multiplier mu_k (Xue et
al., CVPR 2022). Every ``interval`` optimizer steps from ``start_step`` on, the global batch is split
into two halves A and B, and per component

    D_k = 1 - cos(g_A^k, g_B^k)
    mu_k_new = sqrt(clip((D_0 + eps) / (D_k + eps), 0.5, 10))      component 0 = backbone
    mu_k <- 0.97 * mu_k + 0.03 * mu_k_new                          mu starts at 1

D is large when the two halves disagree, i.e. when the component's gradient is noisy. Note the
direction: a component *noisier* than the backbone (D_k > D_0) gets mu_k < 1, a smaller rate; a
component whose gradient is *cleaner* than the backbone's gets mu_k > 1.

The pieces, in the order the training loop uses them on one step:

1. :func:`group_parameters` once, to map the job's name patterns to parameter lists, and
   :func:`component_param_groups` to split the optimizer's groups by component.
2. If ``state.due(step)``: :func:`half_batch_gradients` instead of the usual forward/backward;
   it leaves the full-batch mean gradient in ``.grad`` and returns both halves' gradients, then
   ``state.update(result.distances())``. Otherwise the usual forward/backward.
3. Set the base learning rates for the step (schedule, ``lr_scale``), then
   :func:`apply_multipliers` with ``state.multipliers()``; it multiplies the current rates, so it
   must come after them and run exactly once per step. mu is exactly 1 until the first update,
   so calling it from step 0 is the same as starting at ``start_step``.
4. ``optimizer.step()``.

Decisions where the paper leaves room:

- Several workers: the halves are *global* halves. Each worker splits its local batch in two and
  runs two backward passes under ``DistributedDataParallel.no_sync()``; then one all-reduce
  averages the stacked (g_A, g_B) over workers, so D is measured at half the global batch, as
  in the paper, with any number of workers (odd counts included). The full-batch gradient is
  ``(g_A + g_B) / 2`` of the reduced halves and needs no third collective: an AGVM step sends
  twice the bytes of a normal step (2x on one step in ``interval``, e.g. +10% at interval 10)
  and does the compute of one step in two half-size passes.
- BatchNorm in the model normalises each half with its own statistics and updates its running
  statistics twice on an AGVM step, as if the step ran on twice as many workers; the gradient
  then differs slightly from one full-batch pass. Models without batch-dependent layers get
  exactly the full-batch gradient.
- With an Adam-type optimizer, the half gradients are preconditioned the way the optimizer
  scales its own update, ``g / (sqrt(v / (1 - beta2^t)) + eps)`` from its ``exp_avg_sq`` before
  this step (identity before the first step); ``.grad`` itself is never preconditioned.
- A component whose two half gradients include a zero vector has no defined cosine; it counts
  as D = 1 (uncorrelated). A non-finite D (an fp16 overflow step the grad scaler will skip)
  skips the whole update and leaves mu unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rayaccel.methods.agvm.patterns import DEFAULT_CLASSIFIER_PATTERNS, component_of


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def group_parameters(
    model: nn.Module, patterns: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of a model, by component (see :func:`component_of`).

    Args:
        model: The model, optionally wrapped in ``DistributedDataParallel`` (names are taken
            from the wrapped module). Frozen parameters are left out.
        patterns: As for :func:`component_of`; ``None`` means ``DEFAULT_CLASSIFIER_PATTERNS``.

    Returns:
        ``{component: [parameters in model order]}`` in the order of ``patterns``, so its first
        key is the reference component.

    Raises:
        ValueError: If a parameter cannot be assigned, or a component gets no parameters (its
            patterns match nothing in this model; the message lists some names).
    """
    patterns = DEFAULT_CLASSIFIER_PATTERNS if patterns is None else patterns
    groups: dict[str, list[nn.Parameter]] = {component: [] for component in patterns}
    names = []
    for name, param in _unwrap(model).named_parameters():
        if param.requires_grad:
            groups[component_of(name, patterns)].append(param)
            names.append(name)
    for component, params in groups.items():
        if not params:
            raise ValueError(
                f"component {component!r} (patterns {list(patterns[component])}) matched no "
                f"trainable parameter; this model's names include {names[:3] + names[-3:]}"
            )
    return groups


def component_param_groups(
    groups: Sequence[dict], components: Mapping[str, Sequence[nn.Parameter]]
) -> tuple[list[dict], list[str]]:
    """Split optimizer parameter groups by component, keeping every other group setting.

    E.g. the decay/no-decay groups of :func:`rayaccel.optim.build.param_groups` (or the LARS and
    LAMB variants) become one group per (setting, component) pair, so each component's LR can be
    scaled on its own while weight-decay rules stay as they were.

    Args:
        groups: Parameter-group dicts with a ``params`` list.
        components: As returned by :func:`group_parameters`.

    Returns:
        ``(new_groups, group_component)``: the non-empty split groups in (group, component)
        order, and the component of each, aligned with ``new_groups``.

    Raises:
        ValueError: If a parameter of ``groups`` belongs to no component.
    """
    component_by_id = {id(p): component for component, params in components.items() for p in params}
    new_groups, group_component = [], []
    for index, group in enumerate(groups):
        for param in group["params"]:
            if id(param) not in component_by_id:
                raise ValueError(
                    f"param group {index} holds a parameter of shape {tuple(param.shape)} that "
                    "belongs to no AGVM component; build both from the same model"
                )
        for component in components:
            params = [p for p in group["params"] if component_by_id[id(p)] == component]
            if params:
                new_groups.append({**group, "params": params})
                group_component.append(component)
    return new_groups, group_component


def gradient_cosine_distance(g_a: Sequence[Tensor], g_b: Sequence[Tensor]) -> float:
    """``1 - cos(g_a, g_b)`` of two gradients, each given as a list of per-parameter tensors.

    The lists are treated as one flattened vector each. Products are taken in float32 and summed
    in float64, so large components lose no precision. Either vector being zero gives 1.

    Args:
        g_a: Gradient tensors of one half-batch.
        g_b: The matching tensors of the other half, same shapes in the same order.

    Returns:
        D in [0, 2]: 0 for parallel gradients, 1 for orthogonal, 2 for opposite; NaN if a
        gradient holds inf or NaN (e.g. an fp16 overflow), which :meth:`AGVMState.update` skips.

    Raises:
        ValueError: If the lists are empty or do not match.
    """
    if not g_a or len(g_a) != len(g_b):
        raise ValueError(
            f"g_a and g_b must be non-empty lists of equal length, got {len(g_a)} and {len(g_b)}"
        )
    sums = torch.zeros(3, dtype=torch.float64, device=g_a[0].device)
    for index, (a, b) in enumerate(zip(g_a, g_b, strict=True)):
        if a.shape != b.shape:
            raise ValueError(
                f"g_a[{index}] has shape {tuple(a.shape)} but g_b[{index}] {tuple(b.shape)}"
            )
        a, b = a.float(), b.float()
        sums += torch.stack(
            [
                torch.sum(a * b, dtype=torch.float64),
                torch.sum(a * a, dtype=torch.float64),
                torch.sum(b * b, dtype=torch.float64),
            ]
        )
    dot, norm_a_sq, norm_b_sq = sums.tolist()
    if not (math.isfinite(dot) and math.isfinite(norm_a_sq) and math.isfinite(norm_b_sq)):
        return math.nan
    if norm_a_sq == 0 or norm_b_sq == 0:
        return 1.0
    cosine = dot / math.sqrt(norm_a_sq * norm_b_sq)
    return 1.0 - min(1.0, max(-1.0, cosine))


class AGVMState:
    """The per-component multipliers mu and when to measure them; see the module docstring.

    Args:
        components: Component names; the first is the reference (the backbone, D_0).
        momentum: Weight of the old mu in the moving average, in [0, 1); 0 uses each new
            measurement as is.
        clip: ``(low, high)`` bounds of the variance ratio before the square root, with
            ``0 < low <= 1 <= high`` so the reference keeps mu = 1.
        eps: Added to both distances of the ratio.
        start_step: First optimizer step (0-based) that measures.
        interval: Measure every ``interval`` steps from ``start_step`` on.

    Raises:
        ValueError: If an argument is out of range.
    """

    def __init__(
        self,
        components: Sequence[str],
        *,
        momentum: float = 0.97,
        clip: tuple[float, float] = (0.5, 10.0),
        eps: float = 1e-6,
        start_step: int,
        interval: int,
    ) -> None:
        components = list(components)
        if not components or len(set(components)) != len(components):
            raise ValueError(f"components must be unique names, at least one, got {components}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        low, high = clip
        if not 0 < low <= 1 <= high < math.inf:
            raise ValueError(f"clip must be (low, high) with 0 < low <= 1 <= high, got {clip!r}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        self.components = components
        self.momentum = momentum
        self.clip = (float(low), float(high))
        self.eps = eps
        self.start_step = start_step
        self.interval = interval
        self.mu = dict.fromkeys(components, 1.0)
        self.distances = dict.fromkeys(components, math.nan)
        self.num_updates = 0
        self.num_skipped = 0

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) measures half-batch gradients."""
        return step >= self.start_step and (step - self.start_step) % self.interval == 0

    def update(self, d_by_component: Mapping[str, float]) -> bool:
        """Fold one measurement of D per component into mu.

        Args:
            d_by_component: ``{component: D}`` for exactly this state's components.

        Returns:
            True if mu was updated, False if a D was not finite and the update was skipped.

        Raises:
            ValueError: If components are missing or unknown, or a finite D is outside [0, 2].
        """
        if set(d_by_component) != set(self.components):
            raise ValueError(
                f"d_by_component must have one D per component {self.components}, "
                f"got {sorted(d_by_component)}"
            )
        if not all(math.isfinite(d) for d in d_by_component.values()):
            self.num_skipped += 1
            return False
        for component, distance in d_by_component.items():
            if not 0 <= distance <= 2:
                raise ValueError(
                    f"D of component {component!r} must be in [0, 2] (1 - cosine), got {distance}"
                )
        low, high = self.clip
        reference = d_by_component[self.components[0]] + self.eps
        for component in self.components:
            ratio = reference / (d_by_component[component] + self.eps)
            mu_new = math.sqrt(min(high, max(low, ratio)))
            self.mu[component] = self.momentum * self.mu[component] + (1 - self.momentum) * mu_new
            self.distances[component] = float(d_by_component[component])
        self.num_updates += 1
        return True

    def multipliers(self) -> dict[str, float]:
        """Current ``{component: mu}``; every mu is 1 before the first update."""
        return dict(self.mu)

    def metrics(self) -> dict[str, float]:
        """Namespaced values for the epoch log: ``agvm/mu/<component>`` and the last
        ``agvm/distance/<component>`` (NaN before the first update)."""
        metrics = {f"agvm/mu/{component}": mu for component, mu in self.mu.items()}
        metrics.update({f"agvm/distance/{c}": d for c, d in self.distances.items()})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "components": list(self.components),
            "mu": dict(self.mu),
            "distances": dict(self.distances),
            "num_updates": self.num_updates,
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Raises:
            ValueError: If the checkpoint's components differ from this state's.
        """
        if list(state["components"]) != self.components:
            raise ValueError(
                f"checkpoint holds AGVM components {list(state['components'])} but this run has "
                f"{self.components}; resume with the job's AGVM patterns unchanged"
            )
        self.mu = {c: float(state["mu"][c]) for c in self.components}
        self.distances = {c: float(state["distances"][c]) for c in self.components}
        self.num_updates = int(state["num_updates"])
        self.num_skipped = int(state["num_skipped"])


def adam_precondition(
    params: Sequence[nn.Parameter], grads: Sequence[Tensor], optimizer: torch.optim.Optimizer
) -> list[Tensor]:
    """Scale gradients the way an Adam-type optimizer scales its update.

    ``g / (sqrt(v / (1 - beta2^t)) + eps)`` per element with the optimizer's current
    ``exp_avg_sq`` v, step t, ``betas`` and ``eps`` (no bias correction if the group sets
    ``bias_correction=False``, as LAMB can). Parameters without optimizer state yet (before the
    first step) keep their gradient as is. Works for ``torch.optim.Adam``/``AdamW``, which count
    steps per parameter (``state["step"]``), and ``timm.optim.Lamb``, which counts them per
    parameter group (``group["step"]``).

    Args:
        params: Parameters of the optimizer.
        grads: A gradient for each parameter, aligned with ``params``.
        optimizer: The Adam-type optimizer holding the second moments.

    Returns:
        One tensor per parameter; ``grads`` is not modified in place.

    Raises:
        ValueError: If a parameter has optimizer state without ``exp_avg_sq`` (e.g. SGD or LARS,
            which need no preconditioning).
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    preconditioned = []
    for param, grad in zip(params, grads, strict=True):
        state = optimizer.state.get(param)
        if not state:
            preconditioned.append(grad)
            continue
        if "exp_avg_sq" not in state:
            raise ValueError(
                f"{type(optimizer).__name__} keeps no 'exp_avg_sq'; preconditioning is for "
                "Adam-type optimizers only, pass precondition=None for SGD or LARS"
            )
        group = group_of[id(param)]
        step = float(state["step"] if "step" in state else group["step"])
        correction2 = 1 - group["betas"][1] ** step if group.get("bias_correction", True) else 1.0
        denominator = (state["exp_avg_sq"].float() / correction2).sqrt_().add_(group["eps"])
        preconditioned.append(grad / denominator)
    return preconditioned


@dataclass
class HalfBatchGradients:
    """What :func:`half_batch_gradients` measured.

    Attributes:
        gradients: ``{component: (g_A, g_B)}``, each a list of float32 tensors aligned with the
            component's parameters: the global half-batch mean gradients, preconditioned if
            asked.
        loss: This worker's full-batch mean loss (the mean of its two half losses), detached.
    """

    gradients: dict[str, tuple[list[Tensor], list[Tensor]]]
    loss: Tensor

    def distances(self) -> dict[str, float]:
        """``{component: D_k}``, ready for :meth:`AGVMState.update`."""
        return {
            component: gradient_cosine_distance(g_a, g_b)
            for component, (g_a, g_b) in self.gradients.items()
        }


def _take_rows(targets: Tensor | Sequence[Tensor], rows: slice) -> Tensor | tuple[Tensor, ...]:
    if isinstance(targets, Tensor):
        return targets[rows]
    return tuple(target[rows] for target in targets)


def half_batch_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    inputs: Tensor,
    targets: Tensor | Sequence[Tensor],
    components: Mapping[str, Sequence[nn.Parameter]],
    *,
    precondition: torch.optim.Optimizer | None = None,
    scale_loss: Callable[[Tensor], Tensor] | None = None,
) -> HalfBatchGradients:
    """Forward and backward on each half of the local batch; measure both, keep their mean.

    Afterwards every trainable parameter's ``.grad`` holds ``(g_A + g_B) / 2``, the mean
    gradient of the full (global) batch, exactly what one ordinary forward/backward with DDP
    would leave there (up to BatchNorm, see the module docstring); any earlier ``.grad`` is
    overwritten. Under DDP the two passes run in ``model.no_sync()`` and one all-reduce over
    ``model.process_group`` averages the stacked halves (see the module docstring for the cost).
    Temporary memory: two float32 copies of all trainable gradients.

    Args:
        model: The model, wrapped in ``DistributedDataParallel`` when several workers train.
        loss_fn: ``loss_fn(inputs_half, targets_half)`` runs the forward pass through ``model``
            (under autocast if wanted) and returns that half's mean loss; it is called twice.
        inputs: This worker's batch, split along dim 0; its size must be even.
        targets: A tensor, or a tuple of tensors (e.g. labels and per-sample weights), split the
            same way and passed to ``loss_fn`` in the same structure.
        components: As returned by :func:`group_parameters` for this model.
        precondition: An Adam-type optimizer whose second moments precondition the returned
            half gradients (:func:`adam_precondition`); ``None`` for SGD and LARS.
        scale_loss: Applied to each half loss before ``backward()``, e.g. ``GradScaler.scale``
            for fp16; the gradients left in ``.grad`` are then scaled like the usual ones, and
            the cosine distances do not depend on the scale.

    Returns:
        The measured :class:`HalfBatchGradients`.

    Raises:
        ValueError: If the batch cannot be halved, targets do not match it, or a component holds
            a parameter that is not a trainable parameter of ``model``.
    """
    network = _unwrap(model)
    params = [p for p in network.parameters() if p.requires_grad]
    position = {id(p): index for index, p in enumerate(params)}
    for component, component_params in components.items():
        if any(id(p) not in position for p in component_params):
            raise ValueError(
                f"component {component!r} holds a parameter that is not a trainable parameter "
                "of this model; build components with group_parameters(model, ...)"
            )
    batch = inputs.shape[0]
    if batch < 2 or batch % 2:
        raise ValueError(
            f"AGVM splits each worker's batch into two equal halves, but this worker has {batch} "
            "samples; use an even per-worker batch size"
        )
    target_list = [targets] if isinstance(targets, Tensor) else list(targets)
    if any(target.shape[0] != batch for target in target_list):
        raise ValueError(
            f"targets must have {batch} rows like inputs, got "
            f"{[tuple(target.shape) for target in target_list]}"
        )

    is_ddp = isinstance(model, DistributedDataParallel)
    sizes = [p.numel() for p in params]
    halves = torch.zeros(2, sum(sizes), dtype=torch.float32, device=params[0].device)
    half_losses = []
    with model.no_sync() if is_ddp else contextlib.nullcontext():
        for half, rows in enumerate((slice(0, batch // 2), slice(batch // 2, batch))):
            # Zeroed in place rather than set to None: DDP's gradient_as_bucket_view keeps
            # .grad as views into its buckets.
            for param in params:
                if param.grad is not None:
                    param.grad.zero_()
            loss = loss_fn(inputs[rows], _take_rows(targets, rows))
            (loss if scale_loss is None else scale_loss(loss)).backward()
            half_losses.append(loss.detach())
            for slot, param in zip(halves[half].split(sizes), params, strict=True):
                if param.grad is not None:
                    slot.copy_(param.grad.reshape(-1))
    if is_ddp:
        world_size = dist.get_world_size(model.process_group)
        if world_size > 1:
            dist.all_reduce(halves, group=model.process_group)
            halves /= world_size

    for mean_slot, param in zip(halves.mean(dim=0).split(sizes), params, strict=True):
        mean_grad = mean_slot.view_as(param)
        if param.grad is None:
            param.grad = mean_grad.to(param.dtype, copy=True)
        else:
            param.grad.copy_(mean_grad)

    grads_a = [slot.view_as(p) for slot, p in zip(halves[0].split(sizes), params, strict=True)]
    grads_b = [slot.view_as(p) for slot, p in zip(halves[1].split(sizes), params, strict=True)]
    if precondition is not None:
        grads_a = adam_precondition(params, grads_a, precondition)
        grads_b = adam_precondition(params, grads_b, precondition)
    gradients = {
        component: (
            [grads_a[position[id(p)]] for p in component_params],
            [grads_b[position[id(p)]] for p in component_params],
        )
        for component, component_params in components.items()
    }
    return HalfBatchGradients(gradients=gradients, loss=torch.stack(half_losses).mean())


def apply_multipliers(
    optimizer: torch.optim.Optimizer,
    group_component: Sequence[str],
    multipliers: Mapping[str, float],
) -> None:
    """Multiply each parameter group's current LR by its component's mu.

    Call once per step, after the loop has set the step's base rates (the multiplication is
    relative to them) and before ``optimizer.step()``.

    Args:
        optimizer: Optimizer whose groups are aligned with ``group_component``.
        group_component: Component of each group, from :func:`component_param_groups`.
        multipliers: ``{component: mu}``, e.g. ``AGVMState.multipliers()``.

    Raises:
        ValueError: If the lengths differ, a component has no multiplier, or a multiplier is not
            finite and positive.
    """
    if len(group_component) != len(optimizer.param_groups):
        raise ValueError(
            f"group_component has {len(group_component)} entries but the optimizer has "
            f"{len(optimizer.param_groups)} param groups; build both with component_param_groups"
        )
    for index, (group, component) in enumerate(
        zip(optimizer.param_groups, group_component, strict=True)
    ):
        if component not in multipliers:
            raise ValueError(
                f"param group {index} belongs to component {component!r}, which has no "
                f"multiplier in {sorted(multipliers)}"
            )
        mu = multipliers[component]
        if not (math.isfinite(mu) and mu > 0):
            raise ValueError(f"multiplier of component {component!r} must be > 0, got {mu!r}")
        group["lr"] *= mu
