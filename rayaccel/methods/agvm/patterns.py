"""Which AGVM component a parameter belongs to, by its name (no torch: the job schema checks
patterns with these functions)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

CATCH_ALL = "*"
_REGEX_PREFIX = "re:"

# timm classifiers end in `fc` (ResNet, RegNet), `head` / `head.fc` / `head.norm` (ViT, Swin,
# ConvNeXt), `head_dist` (distilled DeiT) or `classifier` (EfficientNet, MobileNet); CIFAR
# ResNets in the pytorch-cifar style call it `linear`. rayaccel's ResNet-9 uses `head`.
DEFAULT_CLASSIFIER_PATTERNS: dict[str, list[str]] = {
    "backbone": [CATCH_ALL],
    "head": ["head.*", "head_*", "fc.*", "classifier.*", "linear.*"],
}
# rayaccel's segmentation models (`rayaccel.models.segmentation`): a timm backbone, an FPN neck
# and a per-pixel classifier head, the three components the AGVM paper balances.
DEFAULT_SEGMENTATION_PATTERNS: dict[str, list[str]] = {
    "backbone": [CATCH_ALL],
    "neck": ["neck.*"],
    "head": ["head.*"],
}


def check_patterns(patterns: Mapping[str, Sequence[str]]) -> None:
    if not patterns:
        raise ValueError("patterns must name at least one component, got {}")
    catch_alls = []
    for component, component_patterns in patterns.items():
        if not isinstance(component, str) or not component:
            raise ValueError(f"component names must be non-empty strings, got {component!r}")
        if isinstance(component_patterns, str) or not component_patterns:
            raise ValueError(
                f"patterns[{component!r}] must be a non-empty list of patterns, "
                f"got {component_patterns!r}"
            )
        for pattern in component_patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"patterns[{component!r}] holds an empty or non-string pattern")
            if pattern.startswith(_REGEX_PREFIX):
                try:
                    re.compile(pattern[len(_REGEX_PREFIX) :])
                except re.error as error:
                    raise ValueError(
                        f"patterns[{component!r}]: {pattern!r} is not a valid regex: {error}"
                    ) from None
        if CATCH_ALL in component_patterns:
            catch_alls.append(component)
    if len(catch_alls) > 1:
        raise ValueError(f"only one component may hold the catch-all pattern '*', got {catch_alls}")


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith(_REGEX_PREFIX):
        return re.fullmatch(pattern[len(_REGEX_PREFIX) :], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def component_of(name: str, patterns: Mapping[str, Sequence[str]] | None = None) -> str:
    """The component a parameter belongs to, by its name.

    Patterns are shell-style (``fnmatch``, case-sensitive; ``*`` also matches dots) or, when
    prefixed with ``re:``, regular expressions that must match the whole name. A name must match
    the patterns of exactly one component; the component holding the bare pattern ``*`` (at most
    one) takes every name no other component matches, so the order of ``patterns`` only decides
    which component is AGVM's reference (the first, the backbone).

    Args:
        name: A parameter name as ``model.named_parameters()`` gives it (of the unwrapped model,
            without DDP's ``module.`` prefix).
        patterns: ``{component: [pattern, ...]}``; ``None`` means
            ``DEFAULT_CLASSIFIER_PATTERNS`` (backbone vs classifier head).

    Returns:
        The component's name.

    Raises:
        ValueError: If the patterns are malformed, or the name matches two components or none.
    """
    patterns = DEFAULT_CLASSIFIER_PATTERNS if patterns is None else patterns
    check_patterns(patterns)
    matched = [
        component
        for component, component_patterns in patterns.items()
        if any(_matches(name, p) for p in component_patterns if p != CATCH_ALL)
    ]
    if len(matched) > 1:
        raise ValueError(
            f"parameter {name!r} matches the patterns of components {matched}; make them disjoint"
        )
    if matched:
        return matched[0]
    for component, component_patterns in patterns.items():
        if CATCH_ALL in component_patterns:
            return component
    raise ValueError(
        f"parameter {name!r} matches no component of {dict(patterns)}; add a pattern for it or "
        "give one component the catch-all '*'"
    )
