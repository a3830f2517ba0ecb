"""Distil a DDPM checkpoint into a few-step consistency model: see consistency.py and
`python distill.py -h`.

    python distill.py --teacher runs/ddpm_mnist28/ckpt.pt --minutes 20
    python sample.py --ckpt runs/consistency_mnist28/ckpt.pt          # 4 network calls per image
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
from consistency import Consistency
from trainer import train

if __name__ == "__main__":
    train(Consistency())
