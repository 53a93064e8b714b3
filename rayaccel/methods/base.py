"""The named points where speed-up methods plug into the training loop.

The trainer calls, while it sets up (in this order):

    transform_model(model)     the freshly built bare model -> the model to train (before DDP:
                               whitening, Dirac init, ghost BN, frozen BN scales)
    param_groups(model, groups, lr, weight_decay)   the optimizer's groups -> groups
                               (frozen-BN bias groups, then AGVM's split by component)
    wrap_optimizer(optimizer)  the built optimizer -> the one to step (lookahead)
    attach(model)              the bare model, trained from here (EMA copies it)

and then, reading top to bottom:

    on_stage_start(stage)      a new plan stage begins (also on resume in the middle of one)
    on_epoch_start(epoch)      before the first batch of an epoch
    on_batch(batch)            a fresh uint8 batch arrived from Ray Data (replay: uint8 buffer)
    on_inputs(batch)           after normalisation, float32, before autocast
                               (low-pass crop, then replay with an fp16 buffer; later mixup)
    on_loss(losses, batch)     per-sample losses -> per-sample losses to average (InfoBatch)
    backward(...) -> bool      owns the step's backward pass (AGVM's two half-batch passes)
    before_step(optimizer)     after the step's rates are set, before it (AGVM's multipliers)
    after_step()               after the optimizer step (EMA)
    on_epoch_end() -> dict     namespaced metrics, e.g. {"replay/buffer_samples": 4096}
    state_dict() / load_state_dict(state)   checkpointed with the model (rank 0's copy)
    evaluation_weights()       a context the loop evaluates in (EMA swaps its weights in)
    predict(net, inputs)       evaluation logits, or None for the plain forward pass (TTA)

A method subclasses `Hook` and overrides only the points it needs; each point passes through
every hook in the order `rayaccel.methods.ordering` gives, which is where the ordering rules
between methods live. Hooks get typed settings built on the driver and never read the job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class StepBatch:
    """What one step trains on: uint8 pixels at `on_batch`, normalised inputs at `on_inputs`."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    # Per-sample loss weights (InfoBatch's 1 or 1/(1-r)); None means all 1.
    weights: Tensor | None = None
    # Soft (N, num_classes) targets replacing `labels` in the loss (mixup/cutmix), the job's
    # label smoothing already in them (the loss takes them as they are); None: `labels`.
    targets: Tensor | None = None

    def take(self, rows: Tensor) -> StepBatch:
        """The batch's `rows` (e.g. one half of it for AGVM's two backward passes)."""

        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor[rows]

        return StepBatch(
            self.images[rows],
            self.labels[rows],
            self.indices[rows],
            pick(self.weights),
            pick(self.targets),
        )


@dataclass(frozen=True)
class WorkerContext:
    """What every method's hook factory may use on a worker, besides its own settings.

    Attributes:
        rank, world_size: This worker and its group.
        device: The worker's device.
        seed: The job's seed (per-worker streams derive from it: `rayaccel.core.seeds`).
        num_classes: Classes of the task (mixup's one-hot targets).
        optimizer_name: The job's optimizer (AGVM preconditions Adam-type gradients).
        resources: Driver-side objects handed to the workers, e.g. InfoBatch's score board.
        training_images: `training_images(n)`: the first `n` training images, normalised,
            float32 on the CPU, read the same way on every worker.
    """

    rank: int
    world_size: int
    device: Any
    seed: int
    num_classes: int
    optimizer_name: str
    resources: dict[str, Any]
    training_images: Any


@dataclass
class DriverPart:
    """What a method runs on the driver for the length of a run (InfoBatch's score board).

    Attributes:
        resources: Objects handed to every worker (`WorkerContext.resources`), e.g. actors.
        row_filter: A Ray Data batch function training pipelines apply right after reading
            (before the shuffle and the decode), with `row_filter_kwargs`; None: none.
        release: Called once the run ended, successfully or not (e.g. kills an actor).
    """

    resources: dict[str, Any]
    row_filter: Any = None
    row_filter_kwargs: dict[str, Any] | None = None
    release: Any = None


class Hook:
    """A method's view of the trainer; every point defaults to doing nothing."""

    def transform_model(self, model: Any) -> Any:
        return model

    def param_groups(
        self, model: Any, groups: list[dict], *, lr: float, weight_decay: float
    ) -> list[dict]:
        return groups

    def wrap_optimizer(self, optimizer: Any) -> Any:
        return optimizer

    def attach(self, model: Any) -> None:
        """`model` is the bare (not DDP-wrapped) model the run trains."""

    def on_stage_start(self, stage: Any) -> None:
        """`stage` is a `rayaccel.plan.StagePlan` (resolution_px, replay_factor, ...)."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def epoch_samples(self, samples: int) -> int:
        """How many training rows this epoch's Ray Data pass yields (pruning makes it fewer)."""
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        return losses

    def backward(
        self, model: Any, loss_of_rows: Any, inputs: Tensor, optimizer: Any, scale_loss: Any
    ) -> bool:
        """Runs the step's backward pass itself and returns True, or returns False.

        `loss_of_rows(images, rows)` runs the forward pass on those rows of the step's batch
        (all rows with `rows=None`) and returns their mean loss; `scale_loss` is the grad
        scaler's `scale`.
        """
        return False

    def before_step(self, optimizer: Any) -> None:
        pass

    def after_step(self) -> None:
        pass

    def on_epoch_end(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def evaluation_weights(self) -> AbstractContextManager:
        """Context the loop evaluates in (EMA swaps its averaged weights in)."""
        return nullcontext()

    def predict(self, net: Any, inputs: Tensor) -> Tensor | None:
        """Evaluation logits of `inputs`, or None to leave them to the plain forward pass."""
        return None


class MethodHooks:
    """Calls every hook at each point, in order; the loop holds one of these."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def transform_model(self, model: Any) -> Any:
        for hook in self.hooks:
            model = hook.transform_model(model)
        return model

    def param_groups(
        self, model: Any, groups: list[dict], *, lr: float, weight_decay: float
    ) -> list[dict]:
        for hook in self.hooks:
            groups = hook.param_groups(model, groups, lr=lr, weight_decay=weight_decay)
        return groups

    def wrap_optimizer(self, optimizer: Any) -> Any:
        for hook in self.hooks:
            optimizer = hook.wrap_optimizer(optimizer)
        return optimizer

    def attach(self, model: Any) -> None:
        for hook in self.hooks:
            hook.attach(model)

    def on_stage_start(self, stage: Any) -> None:
        for hook in self.hooks:
            hook.on_stage_start(stage)

    def on_epoch_start(self, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_start(epoch)

    def epoch_samples(self, samples: int) -> int:
        for hook in self.hooks:
            samples = hook.epoch_samples(samples)
        return samples

    def on_batch(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_batch(batch)
        return batch

    def on_inputs(self, batch: StepBatch) -> StepBatch:
        for hook in self.hooks:
            batch = hook.on_inputs(batch)
        return batch

    def on_loss(self, losses: Tensor, batch: StepBatch) -> Tensor:
        for hook in self.hooks:
            losses = hook.on_loss(losses, batch)
        return losses

    def backward(
        self, model: Any, loss_of_rows: Any, inputs: Tensor, optimizer: Any, scale_loss: Any
    ) -> bool:
        """True when a hook ran the backward pass (the first that wants to)."""
        return any(
            hook.backward(model, loss_of_rows, inputs, optimizer, scale_loss) for hook in self.hooks
        )

    def before_step(self, optimizer: Any) -> None:
        for hook in self.hooks:
            hook.before_step(optimizer)

    def after_step(self) -> None:
        for hook in self.hooks:
            hook.after_step()

    def on_epoch_end(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for hook in self.hooks:
            metrics.update(hook.on_epoch_end())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {type(hook).__name__: hook.state_dict() for hook in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.load_state_dict(state.get(type(hook).__name__, {}))

    def evaluation_weights(self) -> AbstractContextManager:
        stack = ExitStack()
        for hook in self.hooks:
            stack.enter_context(hook.evaluation_weights())
        return stack

    def predict(self, net: Any, inputs: Tensor) -> Tensor:
        """The first hook's evaluation logits, else the plain forward pass's (as float32)."""
        for hook in self.hooks:
            logits = hook.predict(net, inputs)
            if logits is not None:
                return logits
        return net(inputs).float()
