"""The denoiser / restorer network: a residual UNet with GroupNorm, SiLU, a sinusoidal time
embedding, an optional class embedding (with a null class for classifier-free guidance) and
self-attention at the low resolutions only. Any image size (28x28 included), 1 or 3 channels,
optional 2xC output for learned variance (improved DDPM)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Presets: base width, channel multipliers per level, res blocks per level, attention at
# feature maps no larger than `attn_res`, and `patch_from`: images this large or larger enter
# as `patch` x `patch` patches (pixel unshuffle; 2 unless set), so with 2 a 64 px image costs what a
# 32 px one does. On a CPU the full-resolution 3x3 convs of a 64 px UNet take most of the time and buy
# little; 4x4 patches train in a third of the time per image but came out grainy (docs/defaults.md).
PRESETS = {
    "tiny": dict(ch=16, mults=(1, 2), blocks=1, attn_res=8, dropout=0.0, patch_from=64, lr=1e-3),
    "small": dict(ch=32, mults=(1, 2, 2), blocks=2, attn_res=8, dropout=0.0, patch_from=64, lr=1e-3),
    "medium": dict(ch=64, mults=(1, 2, 2), blocks=2, attn_res=8, dropout=0.0, patch_from=64, lr=5e-4),
    "base": dict(ch=128, mults=(1, 2, 2, 2), blocks=2, attn_res=16, dropout=0.1, patch_from=0, lr=2e-4),
}


def group_norm(ch):
    """Up to 32 groups of at least 4 channels: the most groups that divide ch, so every width builds."""
    groups = min(32, ch // 4) if ch >= 8 else 1
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch)


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of (possibly fractional) timesteps t: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))  # an odd width gets a zero column


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim, dropout):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)  # scale and shift (FiLM), as in improved DDPM
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch, head_dim=32):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        while ch % self.heads:  # widths that are not multiples of head_dim: the most heads that divide ch
            self.heads -= 1
        self.norm, self.qkv, self.proj = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, in_ch=3, size=32, ch=64, mults=(1, 2, 2), blocks=2, attn_res=8, dropout=0.0,
                 num_classes=0, learn_sigma=False, patch_from=0, patch=2):
        super().__init__()
        self.config = dict(in_ch=in_ch, size=size, ch=ch, mults=tuple(mults), blocks=blocks, attn_res=attn_res,
                           dropout=dropout, num_classes=num_classes, learn_sigma=learn_sigma, patch_from=patch_from,
                           patch=patch)
        self.in_ch, self.size, self.num_classes = in_ch, size, num_classes
        self.patch = patch if patch_from and size >= patch_from and size % patch == 0 else 1
        size = size // self.patch
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Index num_classes is the null class: label dropout in training, unconditional branch of CFG.
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_ch * self.patch ** 2, ch, 3, padding=1)

        self.down, skips, res, c = nn.ModuleList(), [ch], size, ch
        for level, m in enumerate(mults):
            for _ in range(blocks):
                self.down.append(nn.ModuleList([ResBlock(c, ch * m, emb_dim, dropout),
                                                Attention(ch * m) if res <= attn_res else nn.Identity()]))
                c = ch * m
                skips.append(c)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # odd sizes round up: 7 -> 4
                skips.append(c)
                res = (res + 1) // 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), Attention(c), ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for _ in range(blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(c + skips.pop(), ch * m, emb_dim, dropout),
                                              Attention(ch * m) if res <= attn_res else nn.Identity()]))
                c = ch * m
            if level > 0:
                self.up.append(nn.Conv2d(c, c, 3, padding=1))  # after a nearest upsample to the skip's size
                res = res * 2
        out_ch = (2 * in_ch if learn_sigma else in_ch) * self.patch ** 2
        self.head = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, out_ch, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x, t, y=None):
        emb = self.time_mlp(timestep_embedding(t, self.time_mlp[0].in_features))
        if self.class_emb is not None:
            y = torch.full((x.shape[0],), self.num_classes, device=x.device) if y is None else y
            emb = emb + self.class_emb(y)
        h = self.stem(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, emb))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        out = self.head(h)
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


def build_unet(preset, in_ch, size, num_classes=0, learn_sigma=False, **overrides):
    """A preset UNet; overrides (e.g. ch=32) change single fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown UNet preset '{preset}'; choose one of {', '.join(PRESETS)}")
    cfg = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    cfg.pop("lr")  # a training default, not part of the network
    return UNet(in_ch=in_ch, size=size, num_classes=num_classes, learn_sigma=learn_sigma, **cfg)


def describe_unet(model, preset=""):
    """One line: parameter count and shape of the network."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return (f"UNet{f' {preset!r}' if preset else ''}: {n / 1e6:.2f} M parameters, {c['in_ch']}x{c['size']}x{c['size']}, "
            f"ch={c['ch']} mults={c['mults']} blocks={c['blocks']} attention at <= {c['attn_res']} px"
            + (f" ({model.patch}x{model.patch} patches)" if model.patch > 1 else "")
            + (f", {c['num_classes']} classes + null" if c['num_classes'] else "")
            + (", learned variance" if c['learn_sigma'] else ""))


def unet_from_config(config):
    return UNet(**config)
