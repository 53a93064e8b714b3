"""Semantic segmentation: a timm backbone's feature pyramid, a small FPN neck and a pixel head.

Built for large-batch segmentation experiments (AGVM), which treat the three parts as separate
parameter groups; hence the fixed submodule names ``backbone``, ``neck`` and ``head``, so every
parameter name starts with one of them.

The backbone returns only the levels with stride <= 16 (the deepest level of each stride):
stride-32 levels would be 1x1 for a 28 px image. Layers after the last used level are pruned
(timm's ``feature_cls="getter"`` route, for models with ``prune_intermediate_layers``), because
a parameter that never gets a gradient makes DistributedDataParallel fail; timm's own feature
classes for EfficientNet and MobileNetV3 would keep and run those layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_FPN_CHANNELS = 64
MAX_FEATURE_REDUCTION = 16


class FeaturePyramidNeck(nn.Module):
    """FPN (Lin et al., 2017) fused into one map at the finest level's resolution.

    Top-down pathway: 1x1 lateral convs bring every level to ``channels``, each coarser map is
    upsampled (nearest) and added to the next finer one, and a 3x3 conv per level smooths the
    upsampling's blockiness. The smoothed levels are then upsampled (bilinear) to the finest
    level and summed, which gives the head all scales at one resolution (as Panoptic FPN's
    semantic branch does, without its per-level conv towers).

    Args:
        in_channels: channels of each backbone level, finest first.
        channels: channels of every pyramid level and of the output.
    """

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(feature) for conv, feature in zip(self.lateral, features, strict=True)]
        for level in range(len(laterals) - 2, -1, -1):
            finer = laterals[level]
            laterals[level] = finer + F.interpolate(
                laterals[level + 1], size=finer.shape[-2:], mode="nearest"
            )
        smoothed = [conv(lateral) for conv, lateral in zip(self.smooth, laterals, strict=True)]
        finest_size = smoothed[0].shape[-2:]
        fused = smoothed[0]
        for level in smoothed[1:]:
            fused = fused + F.interpolate(
                level, size=finest_size, mode="bilinear", align_corners=False
            )
        return fused


class SegmentationFPN(nn.Module):
    """timm backbone + FPN neck + conv head; logits at the input's resolution.

    Args:
        backbone_name: a timm model name that supports ``features_only``.
        num_classes: mask classes, background included.
        in_chans: channels of the input image.
        fpn_channels: channels of the neck and of the head's hidden layer.
        out_indices: backbone levels fed to the neck; None picks the deepest level of each
            reduction <= 16 (see the module docstring).
        pretrained: load timm's pretrained weights into the backbone (downloads them).
        **kwargs: passed on to ``timm.create_model`` (e.g. ``drop_path_rate``).

    Raises:
        ValueError: if the backbone has no feature levels or none with reduction <= 16.
    """

    def __init__(
        self,
        backbone_name: str,
        *,
        num_classes: int,
        in_chans: int,
        fpn_channels: int = DEFAULT_FPN_CHANNELS,
        out_indices: tuple[int, ...] | None = None,
        pretrained: bool = False,
        **kwargs,
    ):
        super().__init__()
        import timm

        with torch.device("meta"):  # layout only: no memory, no initialisation cost
            plain = timm.create_model(backbone_name, pretrained=False, in_chans=in_chans, **kwargs)
        if not getattr(plain, "feature_info", None):
            raise ValueError(
                f"segmentation needs a timm backbone with features_only support; "
                f"{backbone_name!r} has no feature_info"
            )
        if out_indices is None:
            out_indices = default_out_indices(backbone_name, plain.feature_info)
        if hasattr(plain, "prune_intermediate_layers"):
            kwargs = {"feature_cls": "getter", **kwargs}
        self.backbone = timm.create_model(
            backbone_name,
            features_only=True,
            pretrained=pretrained,
            in_chans=in_chans,
            out_indices=out_indices,
            **kwargs,
        )
        self.neck = FeaturePyramidNeck(self.backbone.feature_info.channels(), fpn_channels)
        self.head = nn.Sequential(
            nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(fpn_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fpn_channels, num_classes, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits shaped (N, num_classes, H, W) for images shaped (N, in_chans, H, W)."""
        logits = self.head(self.neck(self.backbone(images)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def default_out_indices(backbone_name: str, feature_info: list[dict]) -> tuple[int, ...]:
    """Indices of the deepest backbone level of each reduction <= 16, finest first.

    Taking one level per reduction keeps a ViT, whose blocks all have reduction 16, at one
    level instead of a dozen identical ones.

    Args:
        backbone_name: for the error message.
        feature_info: the plain timm model's ``feature_info``, one dict per level.

    Raises:
        ValueError: if no level has reduction <= 16.
    """
    reductions = [level["reduction"] for level in feature_info]
    deepest_by_reduction = {}
    for index, reduction in enumerate(reductions):
        if reduction <= MAX_FEATURE_REDUCTION:
            deepest_by_reduction[reduction] = index
    if not deepest_by_reduction:
        raise ValueError(
            f"backbone {backbone_name!r} has no feature level with reduction <= "
            f"{MAX_FEATURE_REDUCTION} (its reductions: {reductions}); pick a CNN backbone"
        )
    return tuple(sorted(deepest_by_reduction.values()))
