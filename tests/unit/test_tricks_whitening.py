"""Tests of 3x3 patch PCA whitening as a fixed first convolution."""

import pytest
import torch
import torch.nn.functional as F

from rayaccel.methods.tricks.whitening import (
    make_whitening_conv,
    patch_covariance,
    whitening_conv_weights,
)


def correlated_images(n_images: int = 32) -> torch.Tensor:
    """Smooth, colour-correlated images: neighbouring pixels and channels strongly correlated."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(n_images, 3, 18, 18, generator=generator)
    smooth = F.avg_pool2d(noise, 3, stride=1)  # 16x16, spatially correlated
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.5, 0.7]])
    return torch.einsum("dc,nchw->ndhw", mixing, smooth) * 3 + 1


def output_covariance(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Covariance over all positions of the conv outputs on the patches fully inside images."""
    outputs = F.conv2d(images.double(), weight.double()).transpose(0, 1).flatten(1)
    return torch.cov(outputs, correction=0)


def test_output_covariance_is_identity_on_the_fitting_data():
    images = correlated_images()
    _, input_covariance = patch_covariance(images)
    identity = torch.eye(27, dtype=torch.float64)
    assert (input_covariance - identity).abs().max() > 0.5  # the inputs are far from white
    weight = whitening_conv_weights(images, eps=1e-9, negated_copies=False)
    assert weight.shape == (27, 3, 3, 3) and weight.dtype == torch.float32
    torch.testing.assert_close(output_covariance(images, weight), identity, atol=2e-3, rtol=0)


def test_eps_damps_each_component_to_lambda_over_lambda_plus_eps():
    images = correlated_images()
    eps = 0.5
    eigenvalues = torch.linalg.eigvalsh(patch_covariance(images)[1]).flip(0)
    weight = whitening_conv_weights(images, eps=eps, negated_copies=False)
    expected = torch.diag(eigenvalues / (eigenvalues + eps))
    torch.testing.assert_close(output_covariance(images, weight), expected, atol=2e-4, rtol=0)


def test_negated_copies_and_frozen_same_size_conv():
    images = correlated_images(8)
    conv = make_whitening_conv(images)
    assert conv.weight.shape == (54, 3, 3, 3) and conv.bias is None
    torch.testing.assert_close(conv.weight[27:], -conv.weight[:27])
    assert not conv.weight.requires_grad
    assert conv(images).shape == (8, 54, 16, 16)


@pytest.mark.parametrize("patch_size", [2, 0, 17])
def test_rejects_bad_patch_size(patch_size):
    with pytest.raises(ValueError, match="patch_size"):
        whitening_conv_weights(correlated_images(2), patch_size=patch_size)
