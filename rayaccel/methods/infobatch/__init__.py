"""InfoBatch: unbiased dynamic data pruning.

- `scores`: the score board, the per-epoch keep set and the loss weights (pure).
- `hook`: the Ray actor holding the run's scores, the Ray Data row filter and the loop hook.
"""
