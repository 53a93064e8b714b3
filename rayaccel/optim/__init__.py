"""Optimizers: one registry of what `train.optimizer.name` may be, and how each is built.

- `registry`: the optimizers by name, which hyper-parameters each takes and its defaults
  (importable without torch, so the job schema takes its names from here).
- `build`: parameter groups (no decay on norms and biases) and the optimizer over them; the
  layer-wise trust-ratio optimizers for very large batches, LARS and LAMB, are timm's.
- `lookahead`: the Lookahead wrapper around any of them.
- `lr_scaling`: how the learning rate follows the global batch (linear, square root, fitted).
"""
