"""Keeping timm models working when a curriculum changes the input resolution between stages.

EfficientTrain++ and progressive learning train one model at several resolutions, and the
optimizer (and DDP) hold references to the model's parameters, so adapting a model must never
replace a parameter:

- CNNs (ResNets, ConvNeXts, EfficientNets, ResNet-9) take any size: nothing to do.
- ViT-style models with a learned position embedding need `dynamic_img_size=True` (timm
  interpolates the embedding on every forward and keeps the full-resolution parameter);
  without it a smaller input fails, so this says so before the first step.
- Swin-style models (stages of window attention) get `set_input_size` with their original
  per-stage window sizes kept, and windows that no longer fit are padded
  (`always_partition`). Letting timm shrink the windows instead would re-create the relative
  position bias tables as new parameters, which the optimizer would never update.
"""

from __future__ import annotations

from torch import nn

_WINDOWS_ATTR = "_rayaccel_window_sizes"
_SIZE_ATTR = "_rayaccel_full_size_px"


def fit_to_resolution(model: nn.Module, resolution_px: int) -> str:
    """Prepares `model` for inputs of `resolution_px` x `resolution_px`; returns what it did.

    Raises:
        ValueError: For a fixed-size ViT-style model asked to take another size, naming the
            job field that fixes it.
    """
    if _is_windowed(model):
        return _fit_windowed(model, resolution_px)
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is None or tuple(img_size) == (resolution_px, resolution_px):
        return "unchanged"
    if getattr(model, "dynamic_img_size", False) or not getattr(
        patch_embed, "strict_img_size", True
    ):
        return "dynamic size"
    raise ValueError(
        f"{type(model).__name__} is built for {tuple(img_size)} px inputs and cannot take "
        f"{resolution_px} px; set model.kwargs.dynamic_img_size: true in the job"
    )


def _is_windowed(model: nn.Module) -> bool:
    layers = getattr(model, "layers", None)
    return (
        hasattr(model, "set_input_size")
        and layers is not None
        and all(
            hasattr(layer, "blocks") and hasattr(layer.blocks[0], "window_size") for layer in layers
        )
    )


def _fit_windowed(model: nn.Module, resolution_px: int) -> str:
    if not hasattr(model, _WINDOWS_ATTR):
        setattr(
            model, _WINDOWS_ATTR, [tuple(layer.blocks[0].window_size) for layer in model.layers]
        )
        setattr(model, _SIZE_ATTR, max(model.patch_embed.img_size))
    windows = getattr(model, _WINDOWS_ATTR)
    if tuple(model.patch_embed.img_size) == (resolution_px, resolution_px):
        return "unchanged"
    model.set_input_size(
        img_size=(resolution_px, resolution_px),
        window_size=windows,
        always_partition=resolution_px < getattr(model, _SIZE_ATTR),
    )
    return f"windows kept at {windows}"
