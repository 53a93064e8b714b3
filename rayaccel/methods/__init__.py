"""Pure building blocks of the speed-up methods rayaccel orchestrates.

Each module holds plain-argument functions and small classes with no knowledge of configs,
plans or the training loop, so they can be unit-tested in isolation and wired in at the loop's
named hook points:

- ``frequency``: EfficientTrain++ low-frequency cropping (exact FFT crop on the accelerator,
  anti-aliased down-sampling on the CPU).
- ``replay``: EfficientTrain++ per-worker replay buffer that cuts preprocessing load R-fold.
- ``curriculum``: EfficientTrain++ stage schedule (resolution, RandAugment magnitude, replay
  factor, Early-Large-Batch batch size and learning rate) and compute accounting.
- ``hooks``: the loop's named hook points (stage start, epoch start, batch, inputs, loss, after
  step, epoch end, state) and the hook objects wiring the methods above into the loop.
"""
