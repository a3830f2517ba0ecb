"""The UNet: shapes for every size and channel count, the learned-variance and class heads, any width."""
import pytest
import torch

from nn_unet import build_unet, describe_unet


# ---- UNet ------------------------------------------------------------------------------------

@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 64), (1, 7)])
def test_unet_shapes(c, size):
    m = build_unet("tiny", c, size)
    x = torch.randn(2, c, size, size)
    assert m(x, torch.tensor([0, 999])).shape == x.shape
    m2 = build_unet("tiny", c, size, num_classes=3, learn_sigma=True)
    assert m2(x, torch.tensor([1, 2]), torch.tensor([0, 3])).shape == (2, 2 * c, size, size)


def test_description_counts_parameters():
    m = build_unet("small", 1, 28, num_classes=10)
    n = sum(p.numel() for p in m.parameters())
    assert f"{n / 1e6:.2f} M parameters" in describe_unet(m, "small") and "10 classes + null" in describe_unet(m)


def test_any_width_builds():
    """Groups, heads and the time embedding follow the width, so any --ch builds."""
    for ch in (1, 5, 7, 12, 20, 48, 56, 100):
        m = build_unet("small", 3, 16, ch=ch)
        assert m(torch.randn(2, 3, 16, 16), torch.tensor([1, 500])).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("patch,grid", [(2, 32), (4, 16)])
def test_patching_hands_the_network_a_smaller_grid_and_returns_full_size(patch, grid):
    """A 64 px image enters as patch x patch patches: the stem sees a grid 1/patch the size with patch² times
    the channels, and the head's output is shuffled back to the full image."""
    m = build_unet("small", 3, 64, patch=patch, learn_sigma=True)
    seen = []
    m.stem.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    x = torch.randn(2, 3, 64, 64)
    assert m(x, torch.tensor([3, 900])).shape == (2, 6, 64, 64)
    assert seen == [(2, 3 * patch ** 2, grid, grid)]
    assert f"{patch}x{patch} patches" in describe_unet(m)
    # below patch_from (64 for small) nothing is patched
    assert build_unet("small", 3, 32, patch=4).patch == 1
