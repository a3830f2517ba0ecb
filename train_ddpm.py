"""Train a DDPM: see objectives.DDPM for the method and `python train_ddpm.py -h` for the flags.

    python train_ddpm.py                                   # main job: maps 64x64, CPU preset, 15 min
    python train_ddpm.py --data coffee --size 64 --device cuda:0
    torchrun --nproc_per_node=2 train_ddpm.py --steps 1000  # DistributedDataParallel
"""
import ctrl_c  # noqa: F401 (first: Ctrl-C during the imports below is one line too)
from objectives import DDPM
from trainer import train

if __name__ == "__main__":
    train(DDPM())
