"""The training scripts' command line: train_ddpm.py, train_zoom_*.py and distill.py share these flags; an
objective adds its own (objectives.py, consistency.py) and --data's defaults (recipes.py)."""
import argparse
import sys

from cli import FRACTION, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, Parser, UserError, add_run_args, number_list
from augment import AUGMENTS
from data import add_data_args
from nn_unet import PRESETS
from runs import typed_flags


def add_model_args(g):
    """The data's augmentation and the network: what a distilled student takes from its teacher."""
    g.add_argument("--preset", default="small", choices=list(PRESETS), help="UNet size (default small)")
    g.add_argument("--ch", type=POSITIVE_INT, default=None,
                   help="override the preset's base width (default: the preset's)")
    g.add_argument("--blocks", type=POSITIVE_INT, default=None,
                   help="override the preset's res blocks per level (default: the preset's; train_ddpm.py --data mnist on a "
                        "CPU without fast bf16: 1, recipes.py)")
    g.add_argument("--mults", type=number_list(POSITIVE_INT, ordered=True), default=None,
                   help="override the preset's width multipliers, one per resolution level (e.g. 1,2,2,4)")
    g.add_argument("--patch", type=POSITIVE_INT, default=None,
                   help="every image enters the network as P x P patches (1: none; default: the preset's, 2 for 64 px "
                        "images and larger, so a 64 px image costs what a 32 px one does)")
    g.add_argument("--cond", action=argparse.BooleanOptionalAction, default=False,
                   help="class-conditional (labelled data), label drop for CFG (default: off; train_ddpm.py turns it on for mnist: recipes.py)")
    g.add_argument("--label-drop", type=FRACTION, default=0.1, help="with --cond: share of labels replaced by null")
    g.add_argument("--augment", default="auto", choices=("auto", *AUGMENTS),
                   help="random augmentation of each training image (auto: the dataset's own: flips, 90° turns for "
                        "overhead tiles, none for digits; crop_flip: random resized crops of 50-100 %% of the area, "
                        "then flips, for a few hundred photos)")
    return g


def base_parser(description, student=False):
    """The training flags; a student (student=True: distill.py) has no data or network flags of its own, as its
    teacher fixes them, only --data-root for where the teacher's data lives."""
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if student:
        fixed = add_data_args(Parser())
        add_model_args(fixed.add_argument_group())
        p.set_defaults(**vars(fixed.parse_args([])))  # overridden by the teacher's (Consistency.defaults)
        p.add_argument("--data-root", default=None, help="where the teacher's data lives (default: where it trained)")
    else:
        add_data_args(p)
    add_run_args(p, "run folder (default runs/<kind>_<data><size>, a new one if it exists; with --resume the one to continue)")
    g = p.add_argument_group("model and optimisation")
    if not student:
        add_model_args(g)
    g.add_argument("--batch", type=POSITIVE_INT, default=32, help="global batch size (default 32)")
    g.add_argument("--lr", type=POSITIVE, default=None, help="learning rate (default: the preset's, 1e-3 for small)")
    g.add_argument("--optimizer", default="adamw", choices=["adam", "adamw", "nadam", "sgd"])
    g.add_argument("--weight-decay", type=NONNEG, default=0.0)
    g.add_argument("--warmup", type=NONNEG_INT, default=100, help="linear lr warm-up steps (default %(default)s)")
    g.add_argument("--cooldown", type=FRACTION, default=0.0,
                   help="decay the lr linearly to 0 over this last share of the budget (of --steps/--epochs, or of "
                        "this session's --minutes): warm-up, stable, decay (0: constant lr; default 0; train_ddpm.py: 0.3 "
                        "for mnist and coffee, recipes.py)")
    g.add_argument("--grad-clip", type=NONNEG, default=1.0, help="max grad norm (0: off; default 1)")
    g.add_argument("--ema-halflife-kimg", type=POSITIVE, default=50.0,
                   help="EMA half-life in thousands of training images (default 50)")
    g.add_argument("--ema-rampup", type=FRACTION, default=0.1,
                   help="the EMA half-life is at most this share of the images seen so far, so a short run averages "
                        "its last tenth rather than its start (0: off; default 0.1; train_ddpm.py: 0.03 for mnist and "
                        "coffee, recipes.py)")
    g = p.add_argument_group("budget and outputs")
    g.add_argument("--epochs", type=POSITIVE_INT, default=None)
    g.add_argument("--steps", type=POSITIVE_INT, default=None, help="total optimiser steps")
    g.add_argument("--minutes", type=POSITIVE, default=None, help="wall-clock budget (default 15 when no budget given)")
    g.add_argument("--sample-every", type=NONNEG_INT, default=5, help="a sample grid every N epochs (0: only at the end)")
    g.add_argument("--ckpt-every", type=NONNEG, default=5.0, help="a checkpoint every N minutes (default 5)")
    g.add_argument("--keep-ckpts", action="store_true",
                   help="also keep ckpt_epochNNN.pt at each sample grid (for fid.py's table of scores by epoch)")
    g.add_argument("--keep-at-minutes", type=number_list(POSITIVE), default=[],
                   help="also keep ckpt_<M>min.pt when training time reaches each of these minutes, e.g. 5,10,20 "
                        "(for quality vs minutes: fid.py --ckpt RUN/ckpt_*min.pt, plots.py scores --x minutes)")
    g.add_argument("--log-every", type=POSITIVE_INT, default=20, help="log every N steps (default 20)")
    g.add_argument("--n", "--num-samples", dest="n", type=POSITIVE_INT, default=32,
                   help="images in each sample grid (under torchrun write --num-samples: torchrun claims --n)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    g.add_argument("--ckpt", default=None, help="with --resume: the checkpoint to continue (default <out>/ckpt.pt)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off on CPU, where compiling takes minutes and "
                        "gained nothing beyond the noise; a failed compile trains eager, said in one line)")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="auto: on for CUDA; off on CPU, where GroupNorm in bf16 channels_last is several times slower")
    return p


def _refuse_teacher_flags(argv):
    """A student's data and network flags are its teacher's: one typed is refused by name."""
    fixed = add_data_args(Parser())
    add_model_args(fixed.add_argument_group())
    names = {o for a in fixed._actions for o in a.option_strings if o not in ("-h", "--help", "--data-root")}
    typed = [a.split("=")[0] for a in argv if a.split("=")[0] in names or a.split("=")[0].startswith("--no-")
             and "--" + a.split("=")[0][5:] in names]
    if typed:
        raise UserError(f"{typed[0]} is the teacher's: a student learns its teacher's data with its network; drop it")


def parse_args(objective, argv=None):
    """The objective's command line, with the defaults of --data's entry in recipes.py where a flag is not
    given; and the set of flags typed."""
    student = getattr(objective, "student", False)
    if student:
        _refuse_teacher_flags(sys.argv[1:] if argv is None else argv)
    p = base_parser(objective.description, student=student)
    objective.add_args(p)
    p.set_defaults(**objective.defaults(p.parse_known_args(argv)[0]))
    args = p.parse_args(argv)
    return args, typed_flags(p, argv, args)
