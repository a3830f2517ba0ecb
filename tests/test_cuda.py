"""CUDA end to end: every precision trains, a GPU checkpoint samples on the CPU, torchrun's nccl path
trains and resumes. Skipped where no GPU is visible (CI has none)."""
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
