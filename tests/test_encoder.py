"""The matcher's EfficientNet-B0 encoder."""

from __future__ import annotations

import pytest
import torch

from matcher.encoder import EfficientNetB0, Encoder


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_backbone_has_efficientnet_b0s_size():
    # torchvision's efficientnet_b0 has 4,007,548 weights without its classifier, for 3
    # input channels; one input channel removes 2 * 3 * 3 * 32 = 576 of them.
    assert n_params(EfficientNetB0(in_channels=3)) == 4_007_548
    assert n_params(EfficientNetB0(in_channels=1)) == 4_007_548 - 576


@pytest.mark.parametrize("pitch_known, k", [(False, 5), (True, 4)])
def test_encoder_maps_a_cqt_image_to_nu_in_the_unit_box(pitch_known, k):
    torch.manual_seed(0)
    enc = Encoder(pitch_known=pitch_known)
    x = torch.randn(3, 1, 120, 257)           # 120 CQT bins, 2**16 / 256 + 1 frames
    nu = enc(x)
    assert nu.shape == (3, k) and bool((nu.abs() < 1).all())
    enc.eval()
    np_single = enc(x[1:2])
    torch.testing.assert_close(np_single, enc(x)[1:2], rtol=1e-5, atol=1e-6)
    assert 3.9e6 < n_params(enc) < 4.1e6


def test_encoder_trains_one_step():
    torch.manual_seed(0)
    enc = Encoder()
    opt = torch.optim.Adam(enc.parameters(), 1e-3)
    x, target = torch.randn(4, 120, 64), torch.rand(4, 5) * 1.6 - 0.8
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(enc(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r"expected \[B, 1, bins, frames\]"):
        Encoder()(torch.randn(2, 3, 120, 64))
