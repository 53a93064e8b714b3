"""Random erasing (Zhong et al. 2020) with timm's transform, on the worker.

- `config`: the `random_erasing:` section, its settings (no torch).
- `hook`: the loop hook that erases rectangles of the normalised inputs.
"""
