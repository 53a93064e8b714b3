"""Model factory: rayaccel's own ResNet-9 plus every timm architecture, by name.

Classification builds the named model itself; segmentation wraps the named timm model as the
backbone of a ``SegmentationFPN`` (see ``rayaccel.models.segmentation``).

timm is imported inside the functions because importing it takes seconds, and config
validation and the CLI should not pay for that unless a model is actually looked up.
"""

from __future__ import annotations

import difflib
import inspect
import re

import torch
from torch import nn

from rayaccel.data.metadata import TASKS
from rayaccel.models.resnet9 import ResNet9
from rayaccel.models.segmentation import DEFAULT_FPN_CHANNELS, SegmentationFPN

__all__ = [
    "ResNet9",
    "SegmentationFPN",
    "build_model",
    "kwargs_problem",
    "model_exists",
    "suggest_models",
]

RESNET9_NAME = "resnet9"
_MAX_SUGGESTIONS = 5
_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '(\w+)'")
# Constructor parameters a job cannot set: rayaccel passes them itself.
_SET_BY_RAYACCEL = {"self", "num_classes", "in_chans", "pretrained", "device", "dtype"}


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


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    task: str = "classification",
    fpn_channels: int = DEFAULT_FPN_CHANNELS,
    **kwargs,
) -> nn.Module:
    """Build a randomly initialised model by name.

    Args:
        name: ``"resnet9"`` for :class:`ResNet9`; any other name is passed to
            ``timm.create_model`` with ``pretrained=False`` (rayaccel trains from scratch).
        num_classes: Number of output logits (per pixel for segmentation).
        in_chans: Channels of the input image.
        task: ``"classification"`` or ``"segmentation"``; segmentation builds a
            :class:`SegmentationFPN` with the timm model ``name`` as its backbone.
        fpn_channels: Segmentation only: channels of the FPN neck and the head.
        **kwargs: Passed on to the model constructor (the backbone for segmentation), e.g.
            ``width_multiplier`` for resnet9 or ``img_size``/``dynamic_img_size`` for timm ViTs.

    Raises:
        ValueError: If ``name`` is neither resnet9 nor a timm model (the message lists the
            closest known names), if ``task`` is unknown, if segmentation is asked of a model
            without timm's ``features_only`` support, or if ``fpn_channels`` is set for
            classification.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "classification" and fpn_channels != DEFAULT_FPN_CHANNELS:
        raise ValueError(
            f"fpn_channels={fpn_channels} applies only to task 'segmentation'; classification "
            "models have no FPN neck"
        )
    if name == RESNET9_NAME:
        if task == "segmentation":
            raise ValueError(
                f"segmentation needs a timm backbone with features_only support; {RESNET9_NAME!r} "
                "is rayaccel's own classifier, pick a timm model such as 'resnet18'"
            )
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
    if task == "segmentation":
        return SegmentationFPN(
            name, num_classes=num_classes, in_chans=in_chans, fpn_channels=fpn_channels, **kwargs
        )
    import timm

    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


def kwargs_problem(
    name: str,
    kwargs: dict,
    *,
    num_classes: int,
    in_chans: int,
    task: str = "classification",
    sizes_px: tuple[int, ...] = (),
) -> tuple[str, str] | None:
    """Why ``build_model(name, **kwargs)`` would fail in the workers, found before any starts:
    ``(where, reason)`` or None.

    The model is built on the ``meta`` device (no memory, no weights initialised: milliseconds
    even for a ViT-B), so every check its constructor makes is made, exactly as a worker would;
    then it runs on a meta batch of each size in ``sizes_px``, which finds inputs it cannot take
    (a ViT's fixed ``img_size``, a network deeper than the image is wide). ``where`` is the
    kwarg to blame, ``""`` for the kwargs as a whole, or ``"<px>"`` for an input size.
    An unknown kwarg's reason lists the ones the model's class accepts.
    """
    try:
        with torch.device("meta"):
            net = build_model(name, num_classes=num_classes, in_chans=in_chans, task=task, **kwargs)
    except TypeError as err:
        unknown = _UNEXPECTED_KWARG.search(str(err))
        if unknown is None:
            return "", f"{name} cannot be built with these kwargs ({err})"
        with torch.device("meta"):
            plain = build_model(name, num_classes=num_classes, in_chans=in_chans)
        accepted = [
            parameter.name
            for parameter in inspect.signature(type(plain).__init__).parameters.values()
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            and parameter.name not in _SET_BY_RAYACCEL
        ]
        return unknown.group(1), (
            f"{name} ({type(plain).__name__}) does not accept it; accepted: {', '.join(accepted)}"
        )
    except (ValueError, RuntimeError, AssertionError, KeyError) as err:
        return "", f"{name} cannot be built with these kwargs ({type(err).__name__}: {err})"
    for size_px in sizes_px:
        try:
            with torch.no_grad():
                net(torch.empty(2, in_chans, size_px, size_px, device="meta"))
        except NotImplementedError:
            return None  # an operator without a meta kernel: nothing more to learn here
        except (ValueError, RuntimeError, AssertionError) as err:
            return str(size_px), (
                f"{name} cannot take {size_px}x{size_px} px images ({type(err).__name__}: "
                f"{err}); set model.kwargs to suit (ViTs: img_size, or dynamic_img_size: true "
                "for several resolutions) or pick another model"
            )
    return None
