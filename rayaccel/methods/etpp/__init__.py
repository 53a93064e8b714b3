"""EfficientTrain++: a frequency curriculum over compute-based stages.

- `curriculum`: the stage schedule (resolution, RandAugment magnitude, replay factor, Early
  Large Batch size and LR) and its compute accounting.
- `frequency`: low-frequency cropping (exact FFT crop, anti-aliased down-sampling).
- `lowpass`: the crop as a loop hook on the worker.
- `replay`: the per-worker replay buffer and its hook.
"""
