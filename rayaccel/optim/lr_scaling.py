"""Large-batch learning-rate scaling rules and their fitted variant.

A job states its learning rate ``base_lr`` at a reference global batch ``base_batch``; training
at another global batch ``B`` (a bigger cluster, or an Early-Large-Batch curriculum stage) uses

- ``linear``: ``base_lr * B / base_batch`` (Goyal et al. 2017, for SGD with warmup),
- ``sqrt``: ``base_lr * sqrt(B / base_batch)`` (the usual rule for Adam, LAMB and the
  EfficientTrain++ curriculum),
- ``fitted``: ``base_lr * (B / base_batch) ** alpha``, with ``alpha`` (and usually ``base_lr``)
  from :func:`fit_power_law` over the best learning rates a Tune search found per batch size,
- ``none``: ``base_lr`` unchanged (LARS and LAMB adapt per layer and are often run this way),

always capped at ``lr_max`` when one is given: the linear rule's rates stop working somewhere
above a few thousand samples per batch, and a cap is how the recipes stay stable beyond that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LR_RULES = ("linear", "sqrt", "fitted", "none")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_batch(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 (samples per global batch), got {value!r}")


def scale_lr(
    base_lr: float,
    *,
    batch: int,
    base_batch: int,
    rule: str,
    alpha: float | None = None,
    lr_max: float | None = None,
) -> float:
    """Learning rate for global batch ``batch`` under a scaling rule, capped at ``lr_max``.

    Examples: ``base_lr=0.1, base_batch=256, batch=1024`` gives 0.4 (linear), 0.2 (sqrt) and,
    with ``alpha=0.75``, about 0.283 (fitted). Batches below ``base_batch`` scale down the same
    way.

    Args:
        base_lr: Learning rate at ``base_batch``.
        batch: Global batch size to compute the rate for.
        base_batch: Global batch size at which ``base_lr`` was tuned.
        rule: One of ``LR_RULES``: "linear", "sqrt", "fitted" or "none".
        alpha: Exponent of the "fitted" rule (e.g. from :func:`fit_power_law`); required for
            "fitted" and rejected for the others, so a misplaced setting cannot be ignored.
        lr_max: Upper bound on the result; ``None`` means no cap.

    Returns:
        ``min(scaled rate, lr_max)``.

    Raises:
        ValueError: If ``rule`` is unknown, ``alpha`` is missing or misplaced, or a number is
            out of range.
    """
    if rule not in LR_RULES:
        raise ValueError(f"rule must be one of {LR_RULES}, got {rule!r}")
    _check_positive("base_lr", base_lr)
    _check_batch("batch", batch)
    _check_batch("base_batch", base_batch)
    if lr_max is not None:
        _check_positive("lr_max", lr_max)
    if rule == "fitted":
        if alpha is None or isinstance(alpha, bool) or not math.isfinite(alpha):
            raise ValueError(
                f"rule 'fitted' needs a finite alpha (the exponent fit_power_law returns), "
                f"got {alpha!r}"
            )
    elif alpha is not None:
        raise ValueError(f"alpha is only used by rule 'fitted', got alpha={alpha!r} with {rule!r}")

    lr = base_lr * (batch / base_batch) ** rule_exponent(rule, alpha)
    return lr if lr_max is None else min(lr, lr_max)


def rule_exponent(rule: str, alpha: float | None = None) -> float:
    """The exponent e of ``lr = base_lr * (batch / base_batch) ** e`` for a rule of
    ``LR_RULES`` (``alpha`` for "fitted"); arguments are checked by :func:`scale_lr`."""
    return {"linear": 1.0, "sqrt": 0.5, "fitted": alpha, "none": 0.0}[rule]


def linear_warmup_epochs_for(batch: int, base_batch: int, base_warmup_epochs: float) -> float:
    """Warmup length in epochs for a global batch, growing with how far the batch is scaled.

    Goyal et al. (2017) ramp the rate linearly from ``base_lr`` to ``k * base_lr`` (k = B /
    base_batch) and find that the larger k is, the more a warmup is needed (none at k = 1, five
    epochs at k = 32, batch 8k). The paper gives no formula, so rayaccel spends
    ``base_warmup_epochs`` per doubling of the batch beyond the base, never less than
    ``base_warmup_epochs``::

        warmup = base_warmup_epochs * max(1, log2(batch / base_batch))

    Each doubling of the rate gets the same training time to settle, so the warmup grows slowly
    (logarithmically) rather than with the number of steps: with ``base_warmup_epochs=1`` and
    ``base_batch=256`` it is 1 epoch up to batch 512, Goyal's 5 epochs at 8k and 7 epochs at
    32k. Batches at or below ``2 * base_batch`` keep the base warmup.

    Args:
        batch: Global batch size of the run.
        base_batch: Global batch size at which ``base_warmup_epochs`` is known to suffice.
        base_warmup_epochs: Warmup at (and up to twice) the base batch, >= 0; 0 stays 0.

    Returns:
        Warmup length in epochs (may be fractional).

    Raises:
        ValueError: If a batch is not a positive int or ``base_warmup_epochs`` is negative.
    """
    _check_batch("batch", batch)
    _check_batch("base_batch", base_batch)
    if isinstance(base_warmup_epochs, bool) or not (
        isinstance(base_warmup_epochs, int | float)
        and math.isfinite(base_warmup_epochs)
        and base_warmup_epochs >= 0
    ):
        raise ValueError(
            f"base_warmup_epochs must be a finite number >= 0, got {base_warmup_epochs!r}"
        )
    return base_warmup_epochs * max(1.0, math.log2(batch / base_batch))


def fit_power_law(
    batches: Sequence[int], best_lrs: Sequence[float], base_batch: int
) -> tuple[float, float]:
    """Fit ``lr = lr_base * (batch / base_batch) ** alpha`` to measured best learning rates.

    Least squares on ``log(lr) = log(lr_base) + alpha * log(batch / base_batch)``: in log space
    the errors of a learning-rate search (a grid spaced by factors) are about equal at every batch
    size, whereas a fit on raw rates would be dominated by the largest batch. The result feeds
    :func:`scale_lr` with ``rule="fitted"``.

    Args:
        batches: Global batch sizes the search tried, at least two distinct values.
        best_lrs: Best learning rate found for each batch, aligned with ``batches``.
        base_batch: Reference batch; ``lr_base`` is the fitted rate there (it need not be one
            of ``batches``).

    Returns:
        ``(lr_base, alpha)``.

    Raises:
        ValueError: If lengths differ, fewer than two distinct batches are given, or a value is
            not positive and finite.
    """
    if len(batches) != len(best_lrs):
        raise ValueError(
            f"batches and best_lrs must align, got {len(batches)} batches and "
            f"{len(best_lrs)} learning rates"
        )
    _check_batch("base_batch", base_batch)
    for i, batch in enumerate(batches):
        _check_batch(f"batches[{i}]", batch)
    for i, lr in enumerate(best_lrs):
        _check_positive(f"best_lrs[{i}]", lr)
    if len(set(batches)) < 2:
        raise ValueError(
            f"fitting an exponent needs at least two distinct batch sizes, got {list(batches)}"
        )
    log_ratio = np.log(np.asarray(batches, dtype=np.float64) / base_batch)
    log_lr = np.log(np.asarray(best_lrs, dtype=np.float64))
    design = np.stack([np.ones_like(log_ratio), log_ratio], axis=1)
    (log_lr_base, alpha), *_ = np.linalg.lstsq(design, log_lr, rcond=None)
    return float(np.exp(log_lr_base)), float(alpha)
