"""EfficientNetV2 progressive learning with adaptive regularisation.

- `stages`: the stage schedule (sizes and regularisation strengths) and the release presets;
  no torch, so the job schema can use it.
- `regularisation`: dropout / drop path on timm models, mixup and cutmix.
- `hook`: the loop hook that applies each stage's regularisation.
"""
