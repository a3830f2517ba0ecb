"""Reading image files as a photo viewer shows them, into uint8 tensors (N, C, H, W), and fetching a zip of
them; the loaders in data.py use them, and read_samples reads fid.py's --samples (a folder or an .npz).
DataError is every data problem's error: the message says what and how to fix it."""
import glob
import os
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from cli import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(UserError):
    """Bad or missing data; the message says what and how to fix it (scripts print it, exit 2)."""


def as_viewed(img, mode):
    """A PIL image as a photo viewer shows it, in `mode`: EXIF orientation applied, 16-bit scaled (not
    clipped) to 8-bit, transparency (RGBA, LA, palette) composited on white; CMYK and the rest by PIL."""
    from PIL import Image, ImageOps
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I"):  # 16-bit greyscale ("I;16*"; "I" when Pillow widens it to 32-bit)
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert(mode)


def decode_image(path, size, mode="RGB"):
    """One file -> uint8 (C, size, size) as a viewer shows it (as_viewed): shorter side resized to size
    (antialiased), centre crop."""
    from PIL import Image
    import torchvision.transforms.functional as TF
    with Image.open(path) as img:
        img.draft(mode, (2 * size, 2 * size))  # JPEG: decode at a reduced scale when it is much larger
        img = as_viewed(img, mode)
        img = TF.center_crop(TF.resize(img, size, antialias=True), size)
        return TF.pil_to_tensor(img)


def decode_files(paths, size, mode="RGB", what="images"):
    """Decode a list of files once; unreadable ones are reported together and skipped."""
    from tqdm import tqdm
    images, keep, bad = [], [], []
    for i, path in enumerate(tqdm(paths, desc=f"decoding {what}", unit="img", disable=len(paths) < 2000)):
        try:
            images.append(decode_image(path, size, mode))
            keep.append(i)
        except Exception as e:  # PIL raises many kinds for a corrupt file
            bad.append(f"{path} ({type(e).__name__})")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s): " + "; ".join(bad[:10])
              + (" ..." if len(bad) > 10 else ""), file=sys.stderr)
    if not images:
        raise DataError(f"none of the {len(paths)} {what} could be read (e.g. {bad[0] if bad else '?'})")
    return torch.stack(images), keep


def read_samples(path):
    """uint8 N x C x H x W from an .npz (sample.py's 'images', N x H x W x C) or a folder of images."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "samples.npz")):
        path = os.path.join(path, "samples.npz")
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise UserError(f"--samples '{path}' does not exist")
        want = "uint8 images N x H x W x C (C = 1 or 3), as sample.py writes them"
        with open(path, "rb") as f:
            if f.read(2) != b"PK":  # an .npz is a zip of .npy arrays; np.load would try other formats
                raise UserError(f"--samples {path}: not an .npz archive (np.savez's zip of arrays); expected {want}")
        try:
            with np.load(path, allow_pickle=False) as z:
                names = z.files
                name = next((k for k in ("images", "x") if k in names), names[0] if len(names) == 1 else None)
                if name is None:
                    raise UserError(f"--samples {path}: holds {', '.join(names) or 'no arrays'}, none named 'images'; "
                                    f"expected {want}, saved as np.savez(FILE, images=...)")
                x = z[name]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"--samples {path}: not a readable .npz of {want} ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:80]})")
        if x.ndim == 3:
            x = x[..., None]  # N x H x W: grey
        if x.dtype != np.uint8 or x.ndim != 4:
            raise UserError(f"--samples {path}: expected {want}, got {x.dtype} {x.shape}")
        if x.shape[-1] not in (1, 3):
            hint = " (channel-first? transpose to N x H x W x C)" if x.shape[1] in (1, 3) else ""
            raise UserError(f"--samples {path}: {x.shape[-1]} channels in {x.shape}; expected {want}{hint}")
        if x.shape[1] != x.shape[2] or len(x) == 0:
            raise UserError(f"--samples {path}: {x.shape} is not a set of square images; expected {want}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if not os.path.isdir(path):
        raise UserError(f"--samples '{path}' is neither a folder of images nor an .npz file")
    files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.lower().endswith(IMAGE_EXTS))
    files = [f for f in files if os.path.basename(f) not in ("grid.png", "progression.png")]
    if not files:
        raise UserError(f"--samples '{path}': no images found")
    from PIL import Image
    for first in files:  # the first readable image sets the mode and size; decode_files reports the unreadable
        try:
            with Image.open(first) as im:
                mode, size = ("L" if im.mode in ("L", "1", "I;16") else "RGB"), im.size[0]
            break
        except Exception:  # PIL raises many kinds for a corrupt file
            continue
    else:
        raise UserError(f"--samples '{path}': none of its {len(files)} image file(s) could be read (e.g. {files[0]})")
    return decode_files(files, size, mode, "samples")[0]


def resize_uint8(x, size):
    """(N, C, H, W) uint8 -> size x size, antialiased, only when needed."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def download_zip(url, root, what, expect):
    """Download a zip archive into root and unzip it there; `expect`: the file that should then exist."""
    import urllib.request
    import zipfile
    os.makedirs(root, exist_ok=True)
    zpath = os.path.join(root, os.path.basename(url))
    try:
        print(f"downloading {url} ...")
        with urllib.request.urlopen(url, timeout=30) as r, open(zpath + ".part", "wb") as f:
            f.write(r.read())
        os.replace(zpath + ".part", zpath)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(root)
    except Exception as e:
        raise DataError(f"could not download {what} from {url} ({type(e).__name__}); "
                        f"download it by hand and unzip into {root}/ so that {expect} exists")
