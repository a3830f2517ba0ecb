"""CUDA end to end: every precision trains, a GPU checkpoint samples on the CPU, torchrun's nccl path
trains and resumes, a training step never syncs with the host. Skipped where no GPU is visible (CI has none)."""
import pytest
import torch

from helpers import TINY, run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
GPU = [a if a != "cpu" else "cuda:0" for a in TINY] + ["--size", "16", "--sample-every", "0"]


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_each_precision_trains_on_cuda_and_the_checkpoint_samples_on_cpu(precision, tmp_path):
    out = tmp_path / "run"
    code, log = run("train_ddpm.py", *GPU, "--precision", precision, "--steps", "6", "--out", str(out))
    assert "stopped (steps) at step 6" in log
    if precision == "auto":
        assert "cuda:0, bf16" in log or "cuda:0, fp16" in log  # the GPU's fastest, never fp32
    ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    run("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "4", "--steps", "3", "--device", "cpu",
        "--out", str(tmp_path / "s"))
    assert (tmp_path / "s" / "grid.png").exists()


def test_fp16_run_resumes_with_its_grad_scaler(tmp_path):
    common = [*GPU, "--precision", "fp16", "--out", str(tmp_path / "run")]
    run("train_ddpm.py", *common, "--steps", "4")
    code, log = run("train_ddpm.py", *common, "--steps", "8", "--resume")
    assert "at step 4" in log and "stopped (steps) at step 8" in log


def test_torchrun_nccl_trains_and_resumes(tmp_path):
    args = [{"--n": "--num-samples", "cuda:0": "cuda"}.get(a, a) for a in GPU]  # torchrun claims '--n'
    common = ["-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29531", "train_ddpm.py", *args,
              "--out", str(tmp_path / "ddp")]
    code, log = run(*common, "--steps", "4")
    assert "stopped (steps) at step 4" in log
    code, log = run(*common, "--steps", "8", "--resume")
    assert "at step 4" in log and "stopped (steps) at step 8" in log


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("kind,over", [("ddpm", {}), ("ddpm", dict(pred="eps", learn_sigma=True, cond=True)),
                                       ("zoom", {})])
def test_a_training_step_never_syncs_with_the_host(kind, over, compiled):
    """The loop's steps as trainer.py runs them (each epoch's order, gather, crop and flip, draws, channels_last
    forward, fused AdamW, EMA, loss meter, budget check), over an epoch's end, under
    torch.cuda.set_sync_debug_mode("error"): any host read or blocking copy raises."""
    import argparse
    from augment import DRAWS, augment_batch
    from data import to_model
    from nn_unet import build_unet
    from runs import LossMeter, Stopper
    from test_gpu_path import _objective
    from train_state import TrainState
    from trainer import epoch_order
    device, mem = torch.device("cuda", 0), torch.channels_last
    obj, args, data, kw = _objective(kind, **over)
    targs = argparse.Namespace(batch=16, ema_halflife_kimg=50.0, ema_rampup=0.1, optimizer="adamw", lr=1e-3,
                               weight_decay=0.0, warmup=10, cooldown=0.3, seed=0, grad_clip=1.0)
    torch.manual_seed(0)
    model = build_unet("tiny", 3, 16, num_classes=data.num_classes if args.cond else 0, **kw)
    model = model.to(device, memory_format=mem)
    state = TrainState(model, targs, device, "bf16")
    fwd = torch.compile(model) if compiled else model
    meter, stopper = LossMeter(device), Stopper(100, None, None, 1, device)
    images, labels = data.images.to(device), data.labels.to(device)  # 32 images: 2 steps an epoch

    def epoch(e):
        perm = epoch_order(0, e, len(images), device)
        for b in range(2):
            idx = perm[16 * b:16 * (b + 1)]
            draws = state.draws()
            x0 = augment_batch(to_model(images[idx]), "crop_flip", draws.uniform(DRAWS["crop_flip"]))
            meter.add(*state.train_step(fwd, obj, x0.contiguous(memory_format=mem), labels[idx] if args.cond else None,
                                        draws))
            stopper.check(state.step, meter.nonfinite, log_step=False)
            state.progress = obj.progress = stopper.progress

    epoch(0)  # warm-up: compilation, the optimiser's state, the schedule's tables on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        epoch(1)
        epoch(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(state.ema.n_averaged) == 6
