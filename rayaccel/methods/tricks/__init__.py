"""The fast-training tricks of the CIFAR-10 speed records (myrtle.ai, airbench), one module each.

Each trick's section and settings are in `config` (no torch); its pure functions and its hook
in its own module: `ema` (weight averaging), `tta` (test-time augmentation), `ghost_bn`,
`frozen_bn` (fixed BN scales, fast BN biases), `whitening` (a fixed PCA-whitening first
layer), `init` (Dirac initialisation), `lookahead`, `flip` (alternating flips), and
`gpu_augment` with `worker_augment` (batched crops, flips and cutout on the worker, as a
hook the trainer builds from the data spec).
"""
