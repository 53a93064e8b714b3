"""The fast-training tricks of the CIFAR-10 speed records (myrtle.ai, airbench), one module each.

`ema` (weight averaging), `tta` (test-time augmentation), `ghost_bn`, `frozen_bn` (fixed BN
scales, fast BN biases), `whitening` (a fixed PCA-whitening first layer), `init` (Dirac
initialisation), `flip` (alternating flips), `gpu_augment` (batched crops, flips, cutout),
`worker_augment` (those as a loop hook) and `model_tricks` (applying the model transforms).
"""
