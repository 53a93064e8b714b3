"""Mixup and CutMix (Zhang et al. 2018, Yun et al. 2019) with timm's `Mixup`, on the worker.

- `config`: the `mixup:` section, its checks and settings (no torch).
- `hook`: the loop hook that mixes each assembled training batch into soft targets.
"""
