"""The speed-up methods, one package each, and the hook points they plug into.

- `base`: the loop's named hook points (`Hook`, `StepBatch`, `MethodHooks`).
- `ordering`: the order of the hooks in a run and the rules that fix it.
- `etpp`: EfficientTrain++ (frequency curriculum, low-frequency crop, replay buffer).
- `progressive`: EfficientNetV2 progressive learning with adaptive regularisation.
- `infobatch`: InfoBatch unbiased dynamic data pruning.
- `agvm`: AGVM per-component learning-rate modulation for large batches.
- `random_erasing`: timm's random erasing of the normalised inputs.
- `mixup`: timm's Mixup and CutMix into soft targets.
- `tricks`: the fast-training tricks of the CIFAR-10 speed records, one module each.

Pure functions on tensors or arrays live beside each method's hook, so they can be tested
alone; methods never read the job: the runner hands them plain arguments.
"""
