"""Train Cold Zoom Diffusion with bilinear interpolation (see zoom.py).

    python train_zoom_bilinear.py --data mnist --data-root DIR --minutes 20
    python sample.py --ckpt runs/zoom_mnist28/ckpt.pt --start bank --sampler naive
"""
from trainer import train
from zoom import ColdZoom

if __name__ == "__main__":
    train(ColdZoom("bilinear"))
