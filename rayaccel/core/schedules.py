"""Learning-rate schedules as pure functions of training progress in epochs.

Progress is a float, ``epoch + step / steps_per_epoch`` (epoch 2, step 10 of 40 is 2.25), not a
step count: methods that change the number of steps per epoch (InfoBatch pruning, large early
batches in EfficientTrain++) would otherwise stretch or squash a step-based schedule. Each
function returns a multiplier in [0, 1] of the peak rate; the plan turns it into each step's
rate (`rayaccel.plan.Plan.lr_at`) and the loop sets that with
:func:`rayaccel.optim.build.set_lr`. Arguments are validated on every call (a few comparisons),
so a bad schedule in a config fails on the first step; ``lr_multiplier(0.0, schedule)`` is a
cheap way to validate one up front.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Callable, Mapping, Sequence


def _check_progress(progress_epochs: float) -> None:
    if not (math.isfinite(progress_epochs) and progress_epochs >= 0):
        raise ValueError(f"progress_epochs must be finite and >= 0, got {progress_epochs}")


def warmup_cosine(
    progress_epochs: float,
    *,
    total_epochs: float,
    warmup_epochs: float,
    final_fraction: float = 0.0,
) -> float:
    """Linear warmup from 0 to 1, then half-cosine decay to ``final_fraction``.

    Warmup is linear in progress, from exactly 0 at progress 0 to 1 at ``warmup_epochs``, as
    in the reference schedules (timm's with ``warmup_lr_init=0``, the EfficientTrain++
    release): the first step trains at rate 0 and each later warm-up step one increment
    higher. The warm-up is a fraction of the progress unit, whatever that unit is: epochs for
    plain plans, the fraction of compute for curriculum plans (a fixed offset in progress
    would be a fixed share of the whole run there). After ``total_epochs`` the value stays at
    ``final_fraction``.

    Args:
        progress_epochs: Training progress in epochs (fractional).
        total_epochs: Where the cosine reaches ``final_fraction``.
        warmup_epochs: Length of the linear warmup; 0 starts the cosine at 1 immediately.
        final_fraction: Multiplier at and after ``total_epochs``.

    Raises:
        ValueError: If progress is negative, ``warmup_epochs`` is not in ``[0, total_epochs)``
            or ``final_fraction`` is not in [0, 1].
    """
    _check_progress(progress_epochs)
    if not 0 <= warmup_epochs < total_epochs:
        raise ValueError(
            "cosine schedule needs 0 <= warmup_epochs < total_epochs, got "
            f"warmup_epochs={warmup_epochs}, total_epochs={total_epochs}"
        )
    if not 0 <= final_fraction <= 1:
        raise ValueError(f"final_fraction must be in [0, 1], got {final_fraction}")

    if progress_epochs < warmup_epochs:
        return progress_epochs / warmup_epochs
    decay_done = min(1.0, (progress_epochs - warmup_epochs) / (total_epochs - warmup_epochs))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * decay_done))


def _validated_points(points: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    if isinstance(points, str | bytes) or not isinstance(points, Sequence) or len(points) < 2:
        raise ValueError(
            "piecewise schedule needs 'points': a list of at least 2 [epoch, multiplier] pairs, "
            f"got {points!r}"
        )
    epochs: list[float] = []
    multipliers: list[float] = []
    for index, point in enumerate(points):
        if (
            not isinstance(point, Sequence)
            or len(point) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
            or not all(math.isfinite(v) for v in point)
        ):
            raise ValueError(
                f"piecewise points[{index}] must be a pair of finite numbers "
                f"[epoch, multiplier], got {point!r}"
            )
        epoch, multiplier = float(point[0]), float(point[1])
        if epochs and epoch <= epochs[-1]:
            raise ValueError(
                f"piecewise points must be sorted by strictly increasing epoch, but "
                f"points[{index}] has epoch {epoch} after epoch {epochs[-1]}"
            )
        if not 0 <= multiplier <= 1:
            raise ValueError(
                f"piecewise points[{index}] has multiplier {multiplier}; multipliers scale the "
                "optimizer's base lr and must be in [0, 1]"
            )
        epochs.append(epoch)
        multipliers.append(multiplier)
    return epochs, multipliers


def piecewise_linear(progress_epochs: float, *, points: Sequence[Sequence[float]]) -> float:
    """Linear interpolation between ``(epoch, multiplier)`` points, held constant outside them.

    The myrtle.ai ResNet-9 recipe uses a triangle, e.g. ``[(0, 0), (5, 1), (24, 0)]`` scaled by
    its peak rate. A first point at multiplier 0 means the first step trains at rate 0, as in
    :func:`warmup_cosine`.

    Args:
        progress_epochs: Training progress in epochs (fractional).
        points: At least 2 ``(epoch, multiplier)`` pairs with strictly increasing epochs and
            multipliers in [0, 1]; lists (as read from YAML) work too.

    Raises:
        ValueError: If progress is negative or ``points`` is malformed; the message names the
            offending point.
    """
    _check_progress(progress_epochs)
    epochs, multipliers = _validated_points(points)
    if progress_epochs <= epochs[0]:
        return multipliers[0]
    if progress_epochs >= epochs[-1]:
        return multipliers[-1]
    right = bisect.bisect_right(epochs, progress_epochs)
    left = right - 1
    fraction = (progress_epochs - epochs[left]) / (epochs[right] - epochs[left])
    return multipliers[left] + fraction * (multipliers[right] - multipliers[left])


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": warmup_cosine,
    "piecewise": piecewise_linear,
}


def lr_multiplier(progress_epochs: float, schedule: Mapping[str, object]) -> float:
    """Evaluate a schedule given as plain data, e.g. from a job's YAML.

    Args:
        progress_epochs: Training progress in epochs (fractional).
        schedule: ``{"name": "cosine" | "piecewise", **keyword arguments of that function}``,
            e.g. ``{"name": "cosine", "total_epochs": 24, "warmup_epochs": 2}``.

    Raises:
        ValueError: If the name is missing or unknown, a key is missing or unexpected, or a
            value is out of range.
    """
    name = schedule.get("name")
    if name not in SCHEDULES:
        raise ValueError(
            f"schedule 'name' must be one of {sorted(SCHEDULES)}, got {name!r} "
            f"(schedule: {dict(schedule)!r})"
        )
    function = SCHEDULES[name]
    kwargs = {key: value for key, value in schedule.items() if key != "name"}
    parameters = list(inspect.signature(function).parameters.values())[1:]
    allowed = {p.name for p in parameters}
    required = {p.name for p in parameters if p.default is inspect.Parameter.empty}
    unexpected = sorted(set(kwargs) - allowed)
    missing = sorted(required - set(kwargs))
    if unexpected or missing:
        raise ValueError(
            f"schedule {name!r} takes keys {sorted(allowed)} (required: {sorted(required)}); "
            f"unexpected: {unexpected}, missing: {missing}"
        )
    return function(progress_epochs, **kwargs)
