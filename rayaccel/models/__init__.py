"""Model factory: rayaccel's own ResNet-9 plus every timm architecture, by name.

timm is imported inside the functions because importing it takes seconds, and config
validation and the CLI should not pay for that unless a model is actually looked up.
"""

from __future__ import annotations

import difflib

from torch import nn

from rayaccel.models.resnet9 import ResNet9

__all__ = ["ResNet9", "build_model", "model_exists", "suggest_models"]

RESNET9_NAME = "resnet9"
_MAX_SUGGESTIONS = 5


def model_exists(name: str) -> bool:
    """Tell whether ``name`` is ``"resnet9"`` or a timm architecture, without building it.

    Args:
        name: A model name as written in a job config, e.g. ``"resnet9"`` or
            ``"resnet50"``. A timm pretrained tag (``"resnet50.a1_in1k"``) is accepted too.
    """
    if name == RESNET9_NAME:
        return True
    import timm

    return timm.is_model(name)


def suggest_models(name: str) -> list[str]:
    """Return up to 5 known model names that ``name`` most likely meant, best first.

    Names that start with ``name`` come first (shortest first), so an incomplete name such as
    ``"vit_tiny"`` suggests ``"vit_tiny_patch16_224"``; then the closest spellings by difflib,
    for typos. Matching ignores case because all known names are lower case.
    """
    import timm

    query = name.lower()
    candidates = [RESNET9_NAME, *timm.list_models()]
    completions = sorted((c for c in candidates if c.startswith(query)), key=len)
    close = difflib.get_close_matches(query, candidates, n=_MAX_SUGGESTIONS)
    return list(dict.fromkeys([*completions, *close]))[:_MAX_SUGGESTIONS]


def build_model(name: str, *, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """Build a randomly initialised model by name.

    Args:
        name: ``"resnet9"`` for :class:`ResNet9`; any other name is passed to
            ``timm.create_model`` with ``pretrained=False`` (rayaccel trains from scratch).
        num_classes: Number of output logits.
        in_chans: Channels of the input image.
        **kwargs: Passed on to the model constructor, e.g. ``width_multiplier`` for resnet9 or
            ``img_size``/``dynamic_img_size`` for timm ViTs.

    Raises:
        ValueError: If ``name`` is neither resnet9 nor a timm model; the message lists the
            closest known names.
    """
    if name == RESNET9_NAME:
        return ResNet9(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if not model_exists(name):
        suggestions = suggest_models(name)
        hint = (
            f"did you mean one of {suggestions}?"
            if suggestions
            else "run `python -c 'import timm; print(timm.list_models())'` for all names"
        )
        raise ValueError(
            f"unknown model {name!r}: it is neither {RESNET9_NAME!r} nor a timm model; {hint}"
        )
    import timm

    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )
