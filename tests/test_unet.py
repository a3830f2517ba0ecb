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


def _every_path_open(m, seed=0):
    """The network as built is the identity in every block and outputs exactly 0 (zeroed head, last convs and
    attention projections), so its output depends on nothing. Give the zeroed weights random values, so the
    time and class embeddings reach the output through every block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return m.eval()


@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 64)])
def test_unet_output_depends_on_t_and_the_label_per_sample(c, size):
    """Each sample's output is a function of its own x, t and label: changing sample 0's t or label changes
    sample 0's output (both the ε and the variance halves of a 2xC learned-sigma head) and leaves sample 1's
    alone; no label is the null class num_classes; the same inputs give the same output."""
    torch.manual_seed(0)
    m = _every_path_open(build_unet("tiny", c, size, num_classes=3, learn_sigma=True))
    x = torch.randn(2, c, size, size)
    t, y = torch.tensor([10, 600]), torch.tensor([1, 2])
    with torch.no_grad():
        out = m(x, t, y)
        assert out.shape == (2, 2 * c, size, size) and out.abs().mean() > 1e-3
        assert torch.equal(m(x, t, y), out)
        for t2, y2 in ((torch.tensor([11, 600]), y), (torch.tensor([900, 600]), y), (t, torch.tensor([0, 2])),
                       (t, torch.tensor([3, 2]))):
            o2 = m(x, t2, y2)
            for half in (slice(0, c), slice(c, 2 * c)):
                assert (o2[0, half] - out[0, half]).abs().mean() > 1e-3 * out[0, half].abs().mean(), (t2, y2)
            assert torch.allclose(o2[1], out[1], atol=1e-5), (t2, y2)
        assert torch.equal(m(x, t), m(x, t, torch.tensor([3, 3])))  # no label: the null class
        assert not torch.allclose(m(x, t), out, atol=1e-4)
        for i in range(2):  # alone or in a batch: the same output
            assert torch.allclose(m(x[i:i + 1], t[i:i + 1], y[i:i + 1]), out[i:i + 1], atol=1e-5)


def test_unconditional_unet_output_depends_on_t():
    torch.manual_seed(0)
    m = _every_path_open(build_unet("tiny", 1, 28))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        a, b = m(x, torch.tensor([5, 5])), m(x, torch.tensor([5, 400]))
    assert torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().mean() > 1e-3 * a[1].abs().mean()


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
