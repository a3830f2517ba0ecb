"""distill.py: a student starts as its teacher and takes its data, network and schedule; it trains on the one
loop (resume included), samples with its own few steps in sample.py and fid.py, and bad input is one line."""
import json

import pytest
import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from data import data_from_args
from helpers import one_line_error, run_here
from nn_unet import build_unet
from consistency import Consistency
from train_args import parse_args
from train_state import StepDraws

DISTILL = ["--n", "4", "--log-every", "1", "--device", "cpu", "--ode-steps", "4"]


@pytest.fixture(scope="module")
def student(ddpm_run, tmp_path_factory):
    """(teacher ckpt, student run folder): 3 distillation steps of the session's maps 16 px DDPM."""
    teacher, out = ddpm_run[0] / "ckpt.pt", tmp_path_factory.mktemp("student") / "run"
    run_here("distill.py", "--teacher", str(teacher), "--steps", "3", *DISTILL, "--out", str(out))
    return teacher, out


def test_a_student_starts_as_its_teacher_with_its_flags(ddpm_run):
    teacher = str(ddpm_run[0] / "ckpt.pt")
    t = load_checkpoint(teacher)
    obj = Consistency()
    args, _ = parse_args(obj, ["--teacher", teacher, "--device", "cpu"])
    for k in ("data", "size", "preset", "batch", "n_maps", "cond"):
        assert getattr(args, k) == t["args"][k], k
    assert args.lr == pytest.approx(t["args"]["lr"] / 5) and args.target == "ode"
    data = data_from_args(args)
    kw = obj.setup(args, data)
    assert (args.pred, args.schedule, args.T) == (t["args"]["pred"], t["args"]["schedule"], t["args"]["T"])
    model = build_unet(args.preset, data.channels, data.size, **kw)
    obj.init_model(model)
    want = model_from_checkpoint(t).state_dict()  # the teacher's EMA weights
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # The loss at the start of the curriculum, on the teacher's own weights: finite, per sample.
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, data.channels, data.size, data.size) * 2 - 1
    loss, level = obj.loss(model, x0, None, StepDraws(gen, torch.Generator(), 0, 0, len(x0)))
    assert loss.shape == (4,) and torch.isfinite(loss).all() and (loss >= 0).all() and ((0 <= level) & (level < 1)).all()


def test_distill_trains_samples_with_its_own_steps_and_resumes(student, tmp_path):
    teacher, out = student
    ck = load_checkpoint(str(out / "ckpt.pt"), kind="ddpm")
    assert ck["step"] == 3 and ck["objective"]["method"] == "consistency" and ck["objective"]["steps"] == 4
    assert ck["args"]["teacher"] == str(teacher) and ck["args"]["pred"] == load_checkpoint(str(teacher))["args"]["pred"]
    assert (out / "samples_final.png").exists() and len(open(out / "log.csv").readlines()) == 4
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "3", "--out", str(tmp_path / "s"),
                         "--device", "cpu")
    assert "consistency, 4 steps, NFE 4" in log and (tmp_path / "s" / "samples.npz").exists()
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "3", "--steps", "1", "--device", "cpu",
                         "--out", str(tmp_path / "s1"))
    assert "consistency, 1 steps, NFE 1" in log
    code, log = run_here("distill.py", "--resume", "--out", str(out), "--steps", "5", *DISTILL)
    assert "resumed" in log and "at step 3" in log and load_checkpoint(str(out / "ckpt.pt"))["step"] == 5


def test_a_conditional_learned_variance_teacher_distils(cond_run, tmp_path):
    """A class-conditional teacher with learned variance distils, and its student samples every class and takes
    --cfg."""
    teacher = str(cond_run[0] / "ckpt.pt")
    out = tmp_path / "ct"
    run_here("distill.py", "--teacher", teacher, "--steps", "2", *DISTILL, "--out", str(out))
    ck = load_checkpoint(str(out / "ckpt.pt"))
    assert ck["class_names"] and ck["model_config"]["learn_sigma"] and ck["objective"]["target"] == "ode"
    code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "4", "--cfg", "2", "--steps", "2",
                         "--device", "cpu", "--out", str(tmp_path / "s"))
    assert "NFE 4" in log  # 2 steps, x2 for guidance


def _set_up_student(teacher, target):
    """A student of `teacher` set up as distill.py does, before any training: (objective, args, data, network)."""
    obj = Consistency()
    args, _ = parse_args(obj, ["--teacher", teacher, "--target", target, "--ode-steps", "5", "--device", "cpu"])
    data = data_from_args(args)
    model = build_unet(args.preset, data.channels, data.size, num_classes=data.num_classes, **obj.setup(args, data))
    obj.init_model(model)
    return obj, args, data, model


def test_ode_target_is_the_teachers_own_trajectory(cond_run, tmp_path):
    """--target ode: the student learns at its sampling levels, from points of the teacher's deterministic
    DPM-Solver++(2M) trajectories, toward each trajectory's end, which is what the sampler itself draws from the same
    noise; a conditional teacher's trajectories follow the labels."""
    from samplers import make_denoiser, sample_dpmpp_2m
    teacher = str(cond_run[0] / "ckpt.pt")
    obj, args, data, model = _set_up_student(teacher, "ode")
    assert obj.levels.tolist() == [250, 500, 749, 999] and set(obj.levels.tolist()) <= set(obj.ode_ts.tolist())
    z, y = torch.randn(3, data.channels, data.size, data.size), torch.tensor([0, 1, 2])
    xs, t, end = obj.ode_pairs(z, y)
    assert xs.shape == (12,) + z.shape[1:] and t.tolist() == [250] * 3 + [500] * 3 + [749] * 3 + [999] * 3
    assert torch.equal(xs[-3:], z)  # the top level is the noise itself
    denoise = make_denoiser(obj.teacher, obj.sched, args.pred, y, None, obj.num_classes, obj.clip, obj.gauss, obj.gauss_snr)
    want = sample_dpmpp_2m(denoise, obj.sched, z, obj.ode_ts)
    assert torch.allclose(end[:3], want, atol=1e-5) and torch.equal(end[:3], end[9:])
    assert not torch.allclose(xs[:3], xs[3:6])  # the levels are different points of the trajectory
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(8, data.channels, data.size, data.size)
    loss, level = obj.loss(model, x0, torch.zeros(8, dtype=torch.long), StepDraws(gen, torch.Generator(), 0, 0, 8))
    assert loss.shape == (8,) and torch.isfinite(loss).all() and sorted(set((level * 1000).round().tolist())) == [
        250, 500, 749, 999]
    out = tmp_path / "ode"
    run_here("distill.py", "--teacher", teacher, "--target", "ode", "--steps", "1", *DISTILL, "--out", str(out))
    assert load_checkpoint(str(out / "ckpt.pt"))["objective"]["target"] == "ode"
    for steps, warned in (("2", False), ("3", True)):  # 2 steps share the 4 trained levels; 3 do not
        code, log = run_here("sample.py", "--ckpt", str(out / "ckpt.pt"), "--n", "2", "--steps", steps, "--device", "cpu",
                             "--out", str(tmp_path / f"s{steps}"))
        assert ("never trained" in log) == warned and f"consistency, {steps} steps" in log


def test_trajectory_target_is_the_ddim_step_onto_the_teachers_trajectory(cond_run, tmp_path):
    """--target trajectory: from each level, the target x̂0 is the one whose DDIM step lands on the teacher's
    trajectory at the next lower level (its end below the lowest), so a student that fits the targets exactly
    reproduces the teacher's trajectory in 4 deterministic DDIM steps; its checkpoint samples that way."""
    from samplers import sample_ddim, timesteps_for
    teacher = str(cond_run[0] / "ckpt.pt")
    obj, args, data, model = _set_up_student(teacher, "trajectory")
    z, y = torch.randn(3, data.channels, data.size, data.size), torch.tensor([0, 1, 2])
    xs, t, target = obj.ode_pairs(z, y)
    obj.args.target = "ode"
    _, _, end = obj.ode_pairs(z, y)
    assert torch.equal(target[:3], end[:3]) and not torch.allclose(target[3:], end[3:])
    lookup = {(lv, i): k for k, (lv, i) in enumerate(zip(t.tolist(), [0, 1, 2] * 4))}

    def oracle(x, level):  # the denoiser of a student that fits its targets exactly
        k = [lookup[(int(level), i)] for i in range(3)]
        x0 = target[k]
        return x0, (x - obj.sched.abar[int(level)].sqrt() * x0) / (1 - obj.sched.abar[int(level)]).sqrt(), None
    levels = timesteps_for(obj.sched, 4, "trailing")
    assert levels.tolist() == [250, 500, 749, 999]
    seen = []
    out = sample_ddim(oracle, obj.sched, z, levels, None, callback=lambda i, x, x0: seen.append(x))
    assert torch.allclose(out, end[:3], atol=1e-4)
    for k, x in zip((2, 1, 0), seen):  # each step lands on the trajectory's point at the next level
        assert torch.allclose(x, xs[3 * k:3 * k + 3], atol=1e-4)
    run = tmp_path / "traj"
    run_here("distill.py", "--teacher", teacher, "--target", "trajectory", "--steps", "1", *DISTILL, "--out", str(run))
    own = load_checkpoint(str(run / "ckpt.pt"))["objective"]
    assert (own["target"], own["sampler"], own["spacing"], own["clip"]) == ("trajectory", "ddim", "trailing", False)
    code, log = run_here("sample.py", "--ckpt", str(run / "ckpt.pt"), "--n", "2", "--device", "cpu",
                         "--out", str(tmp_path / "s"))
    assert "ddim, 4 steps, NFE 4" in log and "never trained" not in log
    code, log = run_here("sample.py", "--ckpt", str(run / "ckpt.pt"), "--n", "2", "--steps", "3", "--device", "cpu",
                         "--out", str(tmp_path / "s3"))
    assert "never trained" in log


def test_fid_sweeps_teacher_and_student_into_one_plot(student, tmp_path):
    from helpers import inception_or_skip
    inception_or_skip()
    teacher, out = student
    fid_out = tmp_path / "fid"
    code, log = run_here("fid.py", "--ckpt", str(teacher), str(out / "ckpt.pt"), "--samplers", "consistency",
                         "--sweep-steps", "1,2", "--n", "4", "--n-ref", "4", "--metrics", "fid,kid",
                         "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(fid_out))
    cards = [json.loads(line) for line in open(fid_out / "scores.jsonl")]
    assert [(c["source"] == str(teacher), c["nfe"]) for c in cards] == [(True, 1), (True, 2), (False, 1), (False, 2)]
    assert [c["kind"] for c in cards] == ["ddpm", "ddpm", "consistency", "consistency"]  # the results page says which
    assert (fid_out / "quality_vs_nfe.png").exists()


def test_distill_bad_input_is_one_line(ddpm_run, zoom_run, student, tmp_path):
    teacher, out = str(ddpm_run[0] / "ckpt.pt"), student[1]
    one_line_error(*run_here("distill.py", "--steps", "1", *DISTILL, "--out", str(tmp_path / "a"), ok=False))
    one_line_error(*run_here("distill.py", "--teacher", str(tmp_path / "none.pt"), *DISTILL, ok=False))
    one_line_error(*run_here("distill.py", "--teacher", str(zoom_run[0] / "ckpt.pt"), *DISTILL, ok=False))
    for flags in (["--data", "cifar10"], ["--size", "32"], ["--preset=small"], ["--cond"], ["--no-cond"], ["--patch", "2"]):
        code, log = run_here("distill.py", "--teacher", teacher, *flags, "--steps", "1", *DISTILL,
                             "--out", str(tmp_path / "b"), ok=False)
        one_line_error(code, log)
        assert f"{flags[0].split('=')[0]} is the teacher's" in log and not (tmp_path / "b").exists(), log
    for target in ("data", "teacher"):  # targets that were not kept
        one_line_error(*run_here("distill.py", "--teacher", teacher, "--target", target, *DISTILL, ok=False))
    code, log = run_here("distill.py", "--teacher", str(student[1] / "ckpt.pt"), "--steps", "1", *DISTILL,
                         "--out", str(tmp_path / "c"), ok=False)
    one_line_error(code, log)  # a student is no teacher: its ODE runs through levels it never learned
    assert "distil its teacher" in log
    one_line_error(*run_here("train_ddpm.py", "--resume", "--out", str(out), "--steps", "9", "--device", "cpu", ok=False))
    one_line_error(*run_here("distill.py", "--resume", "--out", str(ddpm_run[0]), "--steps", "9", *DISTILL, ok=False))
