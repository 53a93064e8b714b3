"""AGVM: per-component learning-rate multipliers from gradient variance, for large batches.

- `patterns`: which component a parameter belongs to, by name (no torch).
- `multipliers`: the multipliers, the half-batch gradients they are measured on, and
  applying them to the optimizer's groups.
- `hook`: the loop hook that owns AGVM's two half-batch backward passes.
"""
