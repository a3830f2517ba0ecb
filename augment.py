"""Training-time augmentation of a batch in [-1, 1]: flips, 90° rotations and random resized crops, per
sample, from uniform numbers the caller draws (a seed replays them; a DDP rank augments its own samples alone).
Which one a dataset takes is decided in data.py (ImageData.augment; never a flip for digits); trainer.py's
--augment overrides it."""
import math

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "flip_rot90", "crop_flip")
DRAWS = {"none": 0, "flip": 1, "flip_rot90": 3, "crop_flip": 5}  # uniform numbers per sample


def random_resized_crop(x, u, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop, per sample and in one grid_sample call: a crop of a random share `scale`
    of the area with a log-uniform aspect `ratio`, anywhere inside the image, resized bilinearly back to full
    size. u: (B, 4) uniform draws. A side longer than the image is clipped to it (torchvision retries instead)."""
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # shares of the width, height
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2], theta[:, 1, 2] = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)  # the crop's centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x, kind, u):
    """Random flips (and 90° rotations for overhead imagery; random resized crops for photos, against
    memorising a few hundred of them) on a batch, per sample; u: (B, DRAWS[kind]) uniform numbers."""
    if kind == "none":
        return x
    u = u.to(x.device)
    if kind == "crop_flip":
        x = random_resized_crop(x, u[:, 1:].to(x.dtype))
    x = torch.where((u[:, 0] < 0.5)[:, None, None, None], x.flip(-1), x)
    if kind == "flip_rot90":
        x = torch.where((u[:, 1] < 0.5)[:, None, None, None], x.flip(-2), x)
        x = torch.where((u[:, 2] < 0.5)[:, None, None, None], x.transpose(-1, -2), x)  # with flips: all 8 symmetries
    return x
