"""The embedded default dataset's generator: procedural Earth-like terrain tiles seen from above, made on the
fly from a seed (no download). data.py's make_maps wraps them as an ImageData."""
import torch
import torch.nn.functional as F

MAP_CLASSES = ["mostly land", "mostly water"]


def _fractal(b, n, octaves, persistence, gen, base=2):
    """Value-noise fBm: bicubic-upsampled random grids, coarse to fine, summed. (b, 1, n, n) in [0, 1]."""
    total = torch.zeros(b, 1, n, n)
    amp = 1.0
    for k in range(octaves):
        g = base * 2 ** k + 1
        grid = torch.rand(b, 1, g, g, generator=gen)
        total += amp * F.interpolate(grid, size=(n, n), mode="bicubic", align_corners=True)
        amp *= persistence
    lo = total.amin(dim=(2, 3), keepdim=True)
    hi = total.amax(dim=(2, 3), keepdim=True)
    return (total - lo) / (hi - lo + 1e-8)


def _blend(a, b, w):
    return a + (b - a) * w


def _color(rgb):
    return torch.tensor(rgb).view(1, 3, 1, 1)


def terrain_tiles(n_images, size=64, seed=0, batch=256):
    """Procedural Earth-like terrain tiles seen from above: fractal elevation and moisture ->
    deep/shallow water, beach, dry land, grass, forest, rock, snow, lit by a hillshade.
    Label 1 = mostly water. The sea level is the q-quantile of the elevation with q ~ U(0.05, 0.95),
    so the water share is q and the two classes are balanced. Deterministic in (seed, n_images, batch).
    Returns (uint8 images N x 3 x size x size, int64 labels N)."""
    images, labels = [], []
    gen = torch.Generator().manual_seed(seed)
    octaves = max(3, size.bit_length() - 1)
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        elev = _fractal(b, size, octaves, 0.5, gen)
        moist = _fractal(b, size, octaves - 2, 0.45, gen)
        q = 0.05 + 0.9 * torch.rand(b, generator=gen)
        ranked = elev.flatten(1).sort(dim=1).values
        sea = ranked.gather(1, (q * (size * size - 1)).long()[:, None]).view(b, 1, 1, 1)
        depth = ((sea - elev) / sea.clamp(min=1e-3)).clamp(0, 1)
        h = ((elev - sea) / (1 - sea).clamp(min=1e-3)).clamp(0, 1)  # height above the sea, 0..1
        snowline = 0.75 + 0.2 * torch.rand(b, 1, 1, 1, generator=gen)
        soft = lambda v, at, width: torch.sigmoid((v - at) / width)

        water = _blend(_color([0.22, 0.47, 0.66]), _color([0.05, 0.14, 0.34]), depth.sqrt())
        lowland = _blend(_color([0.78, 0.72, 0.48]), _color([0.42, 0.62, 0.28]), soft(moist, 0.35, 0.05))
        lowland = _blend(lowland, _color([0.13, 0.36, 0.17]), soft(moist, 0.6, 0.05))  # forest where wet
        land = _blend(lowland, _color([0.45, 0.41, 0.36]), soft(h, snowline - 0.25, 0.04))  # rock
        land = _blend(land, _color([0.95, 0.95, 0.97]), soft(h, snowline, 0.02))  # snow
        land = _blend(_color([0.86, 0.8, 0.6]), land, soft(h, 0.025, 0.008))  # beach at the waterline
        # Hillshade: light from the north-west on the elevation gradient (land only).
        gy, gx = torch.gradient(elev[:, 0], dim=(1, 2))
        shade = (1 + 6.0 * (gy + gx) * size / 64).clamp(0.6, 1.3)[:, None]
        land = land * shade
        is_land = soft(elev, sea, 0.004)
        img = _blend(water, land, is_land)
        img = img + 0.02 * torch.randn(img.shape, generator=gen)  # sensor grain
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
        labels.append((q > 0.5).long())
    return torch.cat(images), torch.cat(labels)
