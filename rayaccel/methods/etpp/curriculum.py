"""EfficientTrain++ curriculum: per-stage resolution, augmentation, replay, batch size and LR.

Pure numbers only. Training is split into stages of equal *compute*; a
stage at resolution B therefore runs ``(full / B)^2`` times as many data epochs as the same
compute would at full resolution. Compute is measured in pixels per image, as in the paper, so
a budget of 200 "equivalent full-resolution epochs" costs 200/300 of a 300-epoch baseline
whatever the schedule. Early stages see low-frequency (small) images and weak RandAugment; the
last stages always run at full resolution with full-strength augmentation.

Resolutions are ints (square images) or ``(height, width)`` pairs in pixels; compute ratios of
non-square images use the pixel-area ratio.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

Resolution = int | tuple[int, int]

_RESOLUTIONS_224_BY_FAMILY = {
    "resnet": (96, 96, 160, 160, 160, 160, 224, 224, 224, 224),
    "swin": (96, 96, 160, 160, 160, 160, 224, 224, 224, 224),
    "cswin": (96, 96, 160, 160, 160, 160, 224, 224, 224, 224),
    "deit": (96, 96, 160, 160, 160, 160, 192, 192, 224, 224),
    "convnext": (160, 160, 160, 160, 160, 160, 224, 224, 224, 224),
}
FAMILIES = (*_RESOLUTIONS_224_BY_FAMILY, "generic")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage, fully resolved.

    Attributes:
        index: 0-based position in the schedule.
        resolution_px: Training image side (or ``(height, width)``) in pixels.
        randaug_magnitude: RandAugment magnitude for this stage (0 = weakest).
        compute_share: Fraction of the total training compute spent in this stage.
        data_epochs: Passes over the (fresh) training data in this stage; may be fractional.
        replay_factor: R; each step takes ``batch / R`` fresh samples, the rest replayed.
        batch_size: Global batch size (all workers together), a multiple of the worker count.
        lr: Peak learning rate of this stage, before the compute-driven warmup/cosine factor.
    """

    index: int
    resolution_px: Resolution
    randaug_magnitude: float
    compute_share: float
    data_epochs: float
    replay_factor: int
    batch_size: int
    lr: float


def _hw(resolution: Resolution, name: str) -> tuple[int, int]:
    """Returns ``(height, width)`` of a resolution, validating it is positive ints."""
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        height_px = width_px = resolution
    elif isinstance(resolution, tuple | list) and len(resolution) == 2:
        height_px, width_px = resolution
    else:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {resolution!r}")
    for side in (height_px, width_px):
        if not isinstance(side, int) or isinstance(side, bool) or side < 1:
            raise ValueError(f"{name} must hold positive int pixel sizes, got {resolution!r}")
    return height_px, width_px


def _area_px(resolution: Resolution, name: str) -> int:
    height_px, width_px = _hw(resolution, name)
    return height_px * width_px


def _round_to_even(value: float) -> int:
    """Nearest even int, halves rounded up (FFT crops split even sizes symmetrically)."""
    return 2 * math.floor(value / 2 + 0.5)


def etpp_resolutions(family: str, full_px: int = 224) -> list[int]:
    """The 10 per-stage training resolutions of EfficientTrain++.

    For ``full_px == 224`` and a known family this is the release preset: ResNet/Swin/CSWin
    ``[96]*2 + [160]*4 + [224]*4``, DeiT ``[96]*2 + [160]*4 + [192]*2 + [224]*2``, ConvNeXt
    ``[160]*6 + [224]*4``. Otherwise (or for ``family="generic"``) the paper's rule for a target
    size gamma: 40% of the compute at a low size, 30% at ``(low + gamma) / 2``, 30% at gamma,
    as 4/3/3 equal-compute stages.

    The card's low size is 96 px, which only makes sense for gamma >= 224 (for 28-px
    Fashion-MNIST or 32-px CIFAR it exceeds the image). For gamma < 224 the low size is scaled
    with the image instead: ``low = round(gamma * 96 / 224)`` to the nearest even int, at least
    8 px (e.g. 32 -> 14, 28 -> 12). The two branches agree at gamma = 224, so the schedule is
    continuous in gamma. The middle size is ``(low + gamma) / 2`` rounded to the nearest even
    int (e.g. 256 -> 176, 32 -> 24); gamma itself is kept as is.

    Args:
        family: One of ``FAMILIES``: "resnet", "swin", "cswin", "deit", "convnext", "generic".
        full_px: Final (full) training resolution gamma in pixels, at least 8.

    Returns:
        10 resolutions in pixels, non-decreasing, ending at ``full_px``.

    Raises:
        ValueError: If ``family`` is unknown or ``full_px`` is below 8.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not isinstance(full_px, int) or full_px < 8:
        raise ValueError(f"full_px must be an int >= 8, got {full_px!r}")
    if full_px == 224 and family != "generic":
        return list(_RESOLUTIONS_224_BY_FAMILY[family])
    low_px = 96 if full_px >= 224 else max(8, _round_to_even(full_px * 96 / 224))
    low_px = min(low_px, full_px)
    mid_px = min(_round_to_even((low_px + full_px) / 2), full_px)
    return [low_px] * 4 + [mid_px] * 3 + [full_px] * 3


def etpp_magnitudes(n_stages: int = 10, max_magnitude: float = 9) -> list[float]:
    """RandAugment magnitude per stage, linear from 0 to ``max_magnitude``.

    With the defaults stage k uses magnitude k (0..9), the release's ``rand-m{k}-mstd0.5-inc1``.

    Args:
        n_stages: Number of stages, at least 1 (a single stage uses ``max_magnitude``).
        max_magnitude: Magnitude of the last stage, at least 0.

    Returns:
        ``n_stages`` magnitudes.

    Raises:
        ValueError: If an argument is out of range.
    """
    if not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
    if max_magnitude < 0:
        raise ValueError(f"max_magnitude must be >= 0, got {max_magnitude!r}")
    if n_stages == 1:
        return [float(max_magnitude)]
    return [max_magnitude * k / (n_stages - 1) for k in range(n_stages)]


def etpp_replay_factors(resolutions: Sequence[Resolution], full_px: Resolution) -> list[int]:
    """Replay factor R per stage from how much smaller than full size each stage is.

    R = 4 if ``B / full <= 0.5``, 2 if ``<= 0.75``, else 1, with ``B / full`` the side ratio
    (the square root of the pixel-area ratio for non-square sizes). Smaller images make the model
    consume data faster, so more of each batch is replayed. This reproduces the release's
    ``[4, 4, 2, 2, 2, 2, 1, 1, 1, 1]`` for the 224-px ResNet/Swin schedule.

    Args:
        resolutions: Per-stage resolutions in pixels.
        full_px: Full resolution in pixels.

    Returns:
        One replay factor per stage.

    Raises:
        ValueError: If a resolution is not a positive size.
    """
    full_area_px = _area_px(full_px, "full_px")
    factors = []
    for i, resolution in enumerate(resolutions):
        side_ratio = math.sqrt(_area_px(resolution, f"resolutions[{i}]") / full_area_px)
        factors.append(4 if side_ratio <= 0.5 else 2 if side_ratio <= 0.75 else 1)
    return factors


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def plan_stages(
    resolutions: Sequence[Resolution],
    *,
    full_px: Resolution,
    budget_epochs: float,
    magnitudes: Sequence[float],
    replay_factors: Sequence[int],
    batch_full: int,
    lr_full: float,
    max_batch: int,
    lr_max: float,
    num_workers: int,
    batch_overrides: Mapping[int, int] | None = None,
    compute_shares: Sequence[float] | None = None,
    lr_alpha: float = 0.5,
) -> list[Stage]:
    """Resolves a stage list: equal compute per stage, Early Large Batch, square-root LR.

    Every stage gets ``budget_epochs / n`` equivalent full-resolution epochs of compute, i.e.
    ``data_epochs = (budget_epochs / n) * area(full) / area(B)`` (or ``budget_epochs * share``
    with ``compute_shares``).

    Early Large Batch keeps per-step compute constant where memory allows:
    ``batch_B = min(batch_full * area(full) / area(B), max_batch)`` rounded down to a multiple of
    ``num_workers`` (never below ``batch_full``) so every worker gets the same per-worker batch,
    and ``lr_B = min(lr_full * sqrt(batch_B / batch_full), lr_max)``. The batch is computed in
    exact rational arithmetic so float error cannot drop it a whole worker multiple.

    Args:
        resolutions: Per-stage resolutions in pixels, each no larger than ``full_px``.
        full_px: Full training resolution in pixels.
        budget_epochs: Total compute in equivalent full-resolution epochs (200 in the paper).
        magnitudes: RandAugment magnitude per stage, each >= 0.
        replay_factors: Replay factor R >= 1 per stage.
        batch_full: Global batch size at full resolution, a multiple of ``num_workers``.
        lr_full: Peak learning rate at ``batch_full``.
        max_batch: Largest global batch allowed (memory or user cap), >= ``batch_full``.
        lr_max: Largest learning rate allowed, >= ``lr_full``.
        num_workers: Number of data-parallel training workers.
        batch_overrides: Optional ``{stage_index: global_batch}``; an override replaces the
            Early-Large-Batch rule for that stage (``max_batch`` is not applied) and must be a
            positive multiple of ``num_workers``. ``None`` means no overrides.
        compute_shares: Optional relative compute per stage (positive; normalised to sum to 1),
            for custom schedules. ``None`` means equal shares, the EfficientTrain++ rule.
        lr_alpha: Exponent of the LR rule ``lr_full * (batch_B / batch_full) ** lr_alpha``;
            0.5 is the square-root rule, other values come from an LR-scaling search.

    Returns:
        One ``Stage`` per resolution, in order.

    Raises:
        ValueError: If any argument is out of range, lengths differ, or a stage's per-worker
            batch is smaller than its replay factor (no room for a fresh sample).
    """
    n_stages = len(resolutions)
    if n_stages == 0:
        raise ValueError("resolutions must hold at least one stage, got []")
    for name, values in (("magnitudes", magnitudes), ("replay_factors", replay_factors)):
        if len(values) != n_stages:
            raise ValueError(
                f"{name} must have one entry per stage ({n_stages}), "
                f"got {len(values)}: {list(values)}"
            )
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if not isinstance(batch_full, int) or batch_full < num_workers or batch_full % num_workers:
        raise ValueError(
            f"batch_full must be a positive multiple of num_workers ({num_workers}), "
            f"got {batch_full!r}"
        )
    if not isinstance(max_batch, int) or max_batch < batch_full:
        raise ValueError(
            f"max_batch must be an int >= batch_full ({batch_full}), got {max_batch!r}"
        )
    _check_positive("budget_epochs", budget_epochs)
    _check_positive("lr_full", lr_full)
    _check_positive("lr_max", lr_max)
    if lr_max < lr_full:
        raise ValueError(f"lr_max must be >= lr_full ({lr_full}), got {lr_max!r}")
    if compute_shares is None:
        compute_shares = [1.0] * n_stages
    if len(compute_shares) != n_stages:
        raise ValueError(
            f"compute_shares must have one entry per stage ({n_stages}), "
            f"got {len(compute_shares)}: {list(compute_shares)}"
        )
    for i, share in enumerate(compute_shares):
        _check_positive(f"compute_shares[{i}]", share)
    total_share = sum(compute_shares)
    shares = [share / total_share for share in compute_shares]
    overrides = dict(batch_overrides or {})
    for stage_index, batch in overrides.items():
        if not (isinstance(stage_index, int) and 0 <= stage_index < n_stages):
            raise ValueError(
                f"batch_overrides keys must be stage indices in [0, {n_stages}), "
                f"got {stage_index!r}"
            )
        if not isinstance(batch, int) or batch < num_workers or batch % num_workers:
            raise ValueError(
                f"batch_overrides[{stage_index}] must be a positive multiple of num_workers "
                f"({num_workers}), got {batch!r}"
            )

    full_h, full_w = _hw(full_px, "full_px")
    stages = []
    for i, resolution in enumerate(resolutions):
        height_px, width_px = _hw(resolution, f"resolutions[{i}]")
        if height_px > full_h or width_px > full_w:
            raise ValueError(
                f"resolutions[{i}] must not exceed full_px {full_px!r}, got {resolution!r}"
            )
        if magnitudes[i] < 0:
            raise ValueError(f"magnitudes[{i}] must be >= 0, got {magnitudes[i]!r}")
        replay_factor = replay_factors[i]
        if not isinstance(replay_factor, int) or replay_factor < 1:
            raise ValueError(f"replay_factors[{i}] must be an int >= 1, got {replay_factor!r}")
        area_ratio = Fraction(full_h * full_w, height_px * width_px)
        if i in overrides:
            batch = overrides[i]
        else:
            # Never below batch_full (a multiple of num_workers), so never below num_workers.
            elb_batch = min(batch_full * area_ratio, Fraction(max_batch))
            batch = math.floor(elb_batch / num_workers) * num_workers
        if batch // num_workers < replay_factor:
            raise ValueError(
                f"stage {i}: per-worker batch {batch // num_workers} (global {batch} / "
                f"{num_workers} workers) is smaller than replay_factors[{i}] = {replay_factor}; "
                f"raise the batch or lower the replay factor"
            )
        stages.append(
            Stage(
                index=i,
                resolution_px=resolution,
                randaug_magnitude=float(magnitudes[i]),
                compute_share=shares[i],
                data_epochs=budget_epochs * shares[i] * float(area_ratio),
                replay_factor=replay_factor,
                batch_size=batch,
                lr=min(lr_full * (batch / batch_full) ** lr_alpha, lr_max),
            )
        )
    return stages


def compute_ratio(
    stages: Sequence[Stage], baseline_epochs: float, *, full_px: Resolution | None = None
) -> float:
    """Training compute of a schedule relative to a full-resolution baseline.

    ``sum(data_epochs * area(B) / area(full)) / baseline_epochs``; e.g. the default 200-epoch
    budget against a 300-epoch baseline gives 2/3. Pixel count is the paper's compute model;
    real FLOPs of ViTs grow slightly faster than pixels (attention), so this is a lower bound
    there.

    Args:
        stages: Planned stages.
        baseline_epochs: Epochs of the full-resolution baseline, > 0.
        full_px: Full resolution; ``None`` means the last stage's resolution (the final stages
            of an EfficientTrain++ schedule always run at full resolution).

    Returns:
        The compute ratio (< 1 means cheaper than the baseline).

    Raises:
        ValueError: If ``stages`` is empty or ``baseline_epochs`` is not positive.
    """
    if not stages:
        raise ValueError("stages must hold at least one stage, got []")
    _check_positive("baseline_epochs", baseline_epochs)
    full_area_px = _area_px(stages[-1].resolution_px if full_px is None else full_px, "full_px")
    equivalent_epochs = sum(
        stage.data_epochs
        * _area_px(stage.resolution_px, f"stages[{stage.index}].resolution_px")
        / full_area_px
        for stage in stages
    )
    return equivalent_epochs / baseline_epochs


def compute_fraction_at(stage_index: int, epoch_in_stage: float, stages: Sequence[Stage]) -> float:
    """Fraction of the total compute spent at a point of training, in [0, 1].

    Warmup and the cosine LR schedule are driven by this instead of the step count, because
    steps at low resolution are cheap and numerous. Within a stage compute grows linearly with
    the (fractional) data epochs done.

    Args:
        stage_index: Index of the current stage.
        epoch_in_stage: Data epochs done in that stage, in ``[0, stages[stage_index].data_epochs]``.
        stages: Planned stages.

    Returns:
        Compute fraction; 0 at the start of stage 0 and 1 at the end of the last stage.

    Raises:
        ValueError: If ``stage_index`` or ``epoch_in_stage`` is out of range.
    """
    if not stages:
        raise ValueError("stages must hold at least one stage, got []")
    if not isinstance(stage_index, int) or not 0 <= stage_index < len(stages):
        raise ValueError(f"stage_index must be in [0, {len(stages)}), got {stage_index!r}")
    stage = stages[stage_index]
    # Tolerate float round-off when a loop accumulates fractional epochs up to the stage end.
    if not 0 <= epoch_in_stage <= stage.data_epochs * (1 + 1e-9):
        raise ValueError(
            f"epoch_in_stage must be in [0, {stage.data_epochs}] for stage {stage_index}, "
            f"got {epoch_in_stage!r}"
        )
    total_share = sum(s.compute_share for s in stages)
    done_share = sum(s.compute_share for s in stages[:stage_index])
    done_share += stage.compute_share * min(1.0, epoch_in_stage / stage.data_epochs)
    return min(1.0, done_share / total_share)
