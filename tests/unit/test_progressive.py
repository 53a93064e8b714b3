"""Tests of EfficientNetV2 progressive learning: stage values, presets, regularisation, mixing."""

import numpy as np
import pytest
import timm
import torch
from timm.layers import DropPath

from rayaccel.methods.progressive.regularisation import mixup_cutmix, set_regularisation
from rayaccel.methods.progressive.stages import (
    EFFICIENTNETV2_PRESETS,
    efficientnetv2_preset,
    progressive_stages,
)


def column(stages, field):
    return [getattr(stage, field) for stage in stages]


def test_efficientnetv2_s_preset_per_stage_values():
    stages = progressive_stages(**efficientnetv2_preset("s"), total_epochs=350)
    # 128 + 172 * i / 3 = 128, 185.3, 242.7, 300: ends exact, middles to multiples of 8.
    assert column(stages, "size_px") == [128, 184, 240, 300]
    assert column(stages, "epochs") == [87, 87, 88, 88]
    assert column(stages, "start_epoch") == [0, 87, 174, 262]
    assert column(stages, "randaug_magnitude") == pytest.approx([5, 5 + 5 / 3, 5 + 10 / 3, 10])
    assert column(stages, "mixup_alpha") == [0, 0, 0, 0]
    assert column(stages, "cutmix_alpha") == [0, 0, 0, 0]
    assert column(stages, "dropout_rate") == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert column(stages, "drop_path_rate") == pytest.approx([0.2] * 4)


def test_efficientnetv2_m_and_l_presets_end_values():
    medium = progressive_stages(**efficientnetv2_preset("m"), total_epochs=8)
    large = progressive_stages(**efficientnetv2_preset("l"), total_epochs=8)
    assert column(medium, "size_px") == column(large, "size_px") == [128, 216, 296, 384]
    assert column(medium, "randaug_magnitude") == pytest.approx([5, 5 + 10 / 3, 5 + 20 / 3, 15])
    assert column(large, "randaug_magnitude") == pytest.approx([5, 10, 15, 20])
    assert column(medium, "mixup_alpha") == pytest.approx([0, 0.2 / 3, 0.4 / 3, 0.2])
    assert column(large, "mixup_alpha") == pytest.approx([0, 0.5 / 3, 1 / 3, 0.5])
    assert (medium[-1].dropout_rate, large[-1].dropout_rate) == pytest.approx((0.4, 0.5))


def test_every_value_is_linear_by_stage():
    stages = progressive_stages(
        5,
        size_start_px=16,
        size_end_px=32,
        randaug_start=0,
        randaug_end=8,
        mixup_start=0.4,
        mixup_end=0.0,
        cutmix_start=0,
        cutmix_end=1,
        dropout_start=0,
        dropout_end=0.4,
        drop_path_start=0.1,
        drop_path_end=0.3,
        total_epochs=12,
        size_multiple_px=4,
    )
    assert column(stages, "index") == [0, 1, 2, 3, 4]
    assert column(stages, "size_px") == [16, 20, 24, 28, 32]
    assert column(stages, "epochs") == [2, 2, 2, 3, 3]
    assert column(stages, "start_epoch") == [0, 2, 4, 6, 9]
    assert column(stages, "randaug_magnitude") == pytest.approx([0, 2, 4, 6, 8])
    assert column(stages, "mixup_alpha") == pytest.approx([0.4, 0.3, 0.2, 0.1, 0])
    assert column(stages, "cutmix_alpha") == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert column(stages, "dropout_rate") == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert column(stages, "drop_path_rate") == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3])


def test_single_stage_uses_end_values():
    (stage,) = progressive_stages(
        1,
        size_start_px=16,
        size_end_px=28,
        randaug_start=1,
        randaug_end=9,
        mixup_start=0,
        mixup_end=0.2,
        dropout_start=0,
        dropout_end=0.3,
        total_epochs=5,
    )
    assert (stage.size_px, stage.epochs, stage.randaug_magnitude) == (28, 5, 9)
    assert (stage.mixup_alpha, stage.dropout_rate) == (0.2, 0.3)


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"total_epochs": 3}, "total_epochs"),
        ({"dropout_end": 1.0}, "dropout_end"),
        ({"mixup_start": -0.1}, "mixup_start"),
        ({"size_start_px": 0}, "size_start_px"),
    ],
)
def test_rejects_bad_arguments(override, name):
    kwargs = {**efficientnetv2_preset("s"), "total_epochs": 350, **override}
    with pytest.raises(ValueError, match=name):
        progressive_stages(**kwargs)


def test_presets_are_read_only_and_unknown_names_list_the_valid_ones():
    with pytest.raises(TypeError):
        EFFICIENTNETV2_PRESETS["s"]["size_end_px"] = 1
    with pytest.raises(ValueError, match=r"\['l', 'm', 's'\]"):
        efficientnetv2_preset("xl")


def drop_probs(model):
    return [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]


def test_set_regularisation_keeps_timm_depth_rule_and_sets_dropout():
    model = timm.create_model("test_resnet", drop_path_rate=0.3, drop_rate=0.0, num_classes=4)
    initial = drop_probs(model)
    assert len(initial) > 1 and max(initial) == pytest.approx(0.3)
    set_regularisation(model, 0.25, 0.1)
    assert model.drop_rate == 0.25
    assert drop_probs(model) == pytest.approx([p / 3 for p in initial])
    set_regularisation(model, 0.0, 0.0)
    assert drop_probs(model) == [0.0] * len(initial)
    set_regularisation(model, 0.0, 0.3)  # the shares survive a stage at rate 0
    assert drop_probs(model) == pytest.approx(initial)


@pytest.mark.parametrize(
    ("name", "dropout"), [("test_vit", "head_drop"), ("test_convnext", "head")]
)
def test_set_regularisation_sets_head_dropout_modules(name, dropout):
    model = timm.create_model(name, drop_path_rate=0.1, num_classes=4)
    set_regularisation(model, 0.4, 0.05)
    head_dropout = model.head_drop if dropout == "head_drop" else model.head.drop
    assert head_dropout.p == 0.4
    assert max(drop_probs(model)) == pytest.approx(0.05)


def test_set_regularisation_needs_drop_path_modules():
    model = timm.create_model("test_resnet", num_classes=4)
    set_regularisation(model, 0.1, 0.0)
    with pytest.raises(ValueError, match="drop_path_rate=<largest stage rate>"):
        set_regularisation(model, 0.1, 0.2)


def value_batch(n_samples: int = 8):
    """Image i is constant i and labelled class i, so a mix's pixels reveal its label weights."""
    images = torch.arange(n_samples, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 6, 5)
    return images.contiguous(), torch.eye(n_samples)


def label_mean(labels):
    return labels @ torch.arange(labels.shape[1], dtype=torch.float32)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_blends_images_and_labels_with_one_lambda(seed):
    images, labels = value_batch()
    mixed, mixed_labels = mixup_cutmix(images, labels, 0.4, 0.0, np.random.default_rng(seed))
    # Constant images stay constant; their value is the label-weighted class.
    assert torch.allclose(mixed, mixed[:, :1, :1, :1].expand_as(mixed))
    torch.testing.assert_close(mixed[:, 0, 0, 0], label_mean(mixed_labels))
    torch.testing.assert_close(mixed_labels.sum(1), torch.ones(8))
    own_weights = mixed_labels.diagonal()
    partner = own_weights < 1
    assert torch.allclose(own_weights[partner], own_weights[partner][0])  # one lambda


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_box_share_matches_the_corrected_lambda(seed):
    images, labels = value_batch()
    mixed, mixed_labels = mixup_cutmix(images, labels, 0.0, 1.0, np.random.default_rng(seed))
    own_share = (mixed == images).float().mean(dim=(1, 2, 3))
    for i in range(8):
        partner_weights = mixed_labels[i].clone()
        partner_weights[i] = 0
        if partner_weights.sum() == 0:  # paired with itself or an empty box
            continue
        assert mixed_labels[i, i] == pytest.approx(own_share[i].item())
        pasted = mixed[i, 0] != i
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        assert pasted.sum() == len(rows) * len(cols)  # one rectangle
    torch.testing.assert_close(mixed.mean(dim=(1, 2, 3)), label_mean(mixed_labels))


def test_both_alphas_alternate_between_mixup_and_cutmix():
    images, labels = value_batch()
    kinds = set()
    for seed in range(20):
        mixed, _ = mixup_cutmix(images, labels, 1.0, 1.0, np.random.default_rng(seed))
        kinds.add("cutmix" if torch.equal(mixed, mixed.round()) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_zero_alphas_return_the_batch_untouched():
    images, labels = value_batch()
    out_images, out_labels = mixup_cutmix(images, labels, 0.0, 0.0, np.random.default_rng(0))
    assert out_images is images and out_labels is labels
