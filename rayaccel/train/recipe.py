"""The worker-side glue of the fast-training tricks, progressive learning and device data.

The loop calls four functions here, each at one place, so it stays short and linear:
`load_device_data` (data.mode: device), `transform_model` (model transforms before DDP),
`build_recipe_optimizer` (frozen-BN groups, lookahead) and `recipe_hooks` (worker-side
augmentation, regularisation, EMA). Their arguments are the plain dicts of `LoopSettings`
that the runner builds from the job.
"""

from __future__ import annotations

import torch
from torch import nn

from rayaccel.core.seeds import worker_seed
from rayaccel.data.device import DeviceDataset, load_device_dataset, load_rows
from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import DecodeSpec
from rayaccel.methods.agvm.hook import split_optimizer_groups
from rayaccel.methods.base import Hook
from rayaccel.methods.progressive.hook import RegularisationHook
from rayaccel.methods.tricks.ema import EmaHook
from rayaccel.methods.tricks.frozen_bn import bn_bias_param_groups
from rayaccel.methods.tricks.model_tricks import apply_model_tricks
from rayaccel.methods.tricks.worker_augment import WorkerAugmentHook
from rayaccel.optim.build import build_optimizer, param_groups
from rayaccel.optim.lookahead import Lookahead
from rayaccel.optim.registry import OptimizerHyperparameters
from rayaccel.train.checkpoint import unwrap


def load_device_data(
    source: dict, *, rank: int, world_size: int, device: torch.device, seed: int
) -> dict[str, DeviceDataset]:
    """This worker's parts of the splits on its device, by the dataset names the plan uses.

    Args:
        source: `{"train": location, "val": location or None, "spec": DecodeSpec fields}`.
        rank, world_size: This worker and the group size (train rows are split equally).
        device: Where the pixels live.
        seed: The run's data seed (the per-epoch order is drawn from it and the rank).
    """
    spec = DecodeSpec(**source["spec"])
    data = {
        "train": load_device_dataset(
            source["train"],
            spec,
            rank=rank,
            world_size=world_size,
            device=device,
            train=True,
            shuffle_seed=worker_seed(seed, rank),
        )
    }
    if source.get("val") is not None:
        data["val"] = load_device_dataset(
            source["val"], spec, rank=rank, world_size=world_size, device=device, train=False
        )
    return data


def whitening_sample(source: dict, *, sample_images: int, mean, std) -> torch.Tensor:
    """The first `sample_images` training images, normalised, as float32 on the CPU.

    Read from storage the same way on every worker, so every worker computes the same
    whitening filters (DDP also broadcasts rank 0's at wrap time). Bad rows are left out.
    """
    meta = read_meta(source["train"])
    rows = torch.arange(min(sample_images, meta.count)).numpy()
    arrays = load_rows(source["train"], meta, DecodeSpec(**source["spec"]), rows)
    images = torch.from_numpy(arrays["image"][arrays["bad"] == 0]).float()
    mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(std).view(1, -1, 1, 1) * 255
    return (images - mean) / std


def transform_model(
    model: nn.Module, model_tricks: dict, *, whitening: dict | None, source: dict, mean, std
) -> nn.Module:
    """Applies the model tricks (`apply_model_tricks`) to a freshly built model.

    Args:
        model_tricks: `dirac_init`, `ghost_bn_virtual_batch`, `frozen_bn_scale`.
        whitening: `{"patch_size", "eps", "sample_images"}` or None.
        source, mean, std: Where the whitening sample comes from and how to normalise it.
    """
    images = None
    if whitening is not None:
        images = whitening_sample(
            source, sample_images=whitening["sample_images"], mean=mean, std=std
        )
    return apply_model_tricks(
        model,
        **model_tricks,
        whitening_images=images,
        whitening_patch_size=whitening["patch_size"] if whitening else 3,
        whitening_eps=whitening["eps"] if whitening else 1e-2,
    )


def build_recipe_optimizer(
    model: nn.Module,
    optimizer: dict,
    *,
    bn_bias: dict | None,
    lookahead: dict | None,
    agvm_components: dict | None = None,
):
    """The job's optimizer, with frozen-BN parameter groups, AGVM's per-component groups and
    lookahead when enabled.

    Args:
        optimizer: `OptimizerHyperparameters` fields.
        bn_bias: `{"bias_lr_multiplier", "bias_wd_divisor"}` or None (plain groups).
        lookahead: `{"k", "alpha"}` or None.
        agvm_components: AGVM's `{component: name patterns}`, or None without AGVM.

    Returns:
        `(optimizer, agvm_layout)`: `agvm_layout` is `(components, group_component)` from
        `split_optimizer_groups` (each component's parameters, each group's component), None
        without AGVM.
    """
    bare = unwrap(model)
    if bn_bias is not None:
        groups = bn_bias_param_groups(bare, optimizer["lr"], optimizer["weight_decay"], **bn_bias)
    else:
        groups = param_groups(bare, optimizer["weight_decay"])
    agvm_layout = None
    if agvm_components is not None:
        groups, *agvm_layout = split_optimizer_groups(bare, groups, agvm_components)
    built = build_optimizer(model, OptimizerHyperparameters(**optimizer), groups=groups)
    return (Lookahead(built, **lookahead) if lookahead is not None else built), agvm_layout


def recipe_hooks(
    model: nn.Module,
    *,
    worker_augment: dict | None,
    ema: dict | None,
    progressive: bool,
    num_classes: int,
    seed: int,
    rank: int,
    device: torch.device,
) -> dict[str, Hook | None]:
    """`build_hooks` keyword arguments for the recipe hooks (None where off).

    Args:
        model: The model (DDP-wrapped or bare).
        worker_augment: `WorkerAugmentHook` settings (crop_padding_px, flip, cutout_px,
            samples_per_choice) or None.
        ema: `{"momentum", "every_steps"}` or None.
        progressive: The plan's stages carry EfficientNetV2 regularisation.
        num_classes: For mixup's one-hot targets.
        seed: The run's seed; per-worker seeds are derived from it and `rank`.
    """
    bare = unwrap(model)
    per_worker_seed = worker_seed(seed, rank)
    return {
        "worker_augment": (
            WorkerAugmentHook(**worker_augment, seed=per_worker_seed, flip_seed=seed, device=device)
            if worker_augment is not None
            else None
        ),
        "regularisation": (
            RegularisationHook(bare, num_classes=num_classes, seed=per_worker_seed)
            if progressive
            else None
        ),
        "ema": EmaHook(bare, **ema) if ema is not None else None,
    }
