"""Train Cold Zoom Diffusion with bilinear interpolation: see objectives.ColdZoom and zoom.py.

    python train_zoom_bilinear.py --data mnist --data-root DIR --minutes 20
    python sample.py --ckpt runs/zoom_bilinear_mnist28/ckpt.pt --start bank --sampler naive
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
from objectives import ColdZoom
from trainer import train

if __name__ == "__main__":
    train(ColdZoom("bilinear"))
