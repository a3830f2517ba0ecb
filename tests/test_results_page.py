"""RESULTS.md and results/ALL.md: the committed pages are what the committed cards make, and the short page shows the
best card of each method and budget at the section's N and reference, under its floor, in at most 10 rows."""
import glob
import json
import os
import shutil

from helpers import HERE, one_line_error, run_here

REGENERATE = "python plots.py results results/*.jsonl --out RESULTS.md"


def test_committed_pages_are_made_from_the_committed_cards(tmp_path, monkeypatch):
    """The documented command, run on copies of results/*.jsonl (beside the kept pictures), writes RESULTS.md and
    results/ALL.md byte for byte as committed: a card added or changed without making the pages again fails here."""
    (tmp_path / "results").mkdir()
    for card_file in glob.glob(os.path.join(HERE, "results", "*.jsonl")):
        shutil.copy(card_file, tmp_path / "results")
    os.symlink(os.path.join(HERE, "results", "grids"), tmp_path / "results" / "grids")  # the links it checks
    monkeypatch.chdir(tmp_path)
    run_here("plots.py", "results", *sorted(glob.glob(os.path.join("results", "*.jsonl"))), "--out", "RESULTS.md")
    for page in ("RESULTS.md", os.path.join("results", "ALL.md")):
        made, committed = (tmp_path / page).read_text(), open(os.path.join(HERE, page), encoding="utf-8").read()
        assert made == committed, f"{page} is not what the cards make: run `{REGENERATE}` and commit it"
    assert f"`{REGENERATE}`" in made and f"`{REGENERATE}`" in committed


def _card(source, kid, n=100, **more):
    return dict(source=source, kid=kid, kid_std=kid / 10, fd=100 * kid, n=n, n_ref=n, ref="mnist:test", size=28,
                extractor="classifier", machine="AMD EPYC, 2 threads, AVX512-bf16", **more)


def _run(source, minutes, kid, command=None, **more):
    """A card of a train_ddpm.py run with a minute budget."""
    command = command or f"python train_ddpm.py --data mnist --minutes {minutes} --out {os.path.dirname(source)}"
    return _card(source, kid, **{**dict(kind="ddpm", data="mnist", step=100 * minutes, train_minutes=minutes + 0.01,
                                        sampler="dpmpp2m_sde", steps=15, nfe=7, train=dict(command=command)), **more})


def test_leaderboard_keeps_the_best_of_each_method_and_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("results/grids")
    open("results/grids/b.jpg", "wb").close()  # run b's picture, of its default sampling only
    cards = [
        _card("real mnist:train", 0.0004),  # the floor at N 100
        _card("real mnist:train", 0.0009, n=50),  # the floor at another N: not this section's
        _run("runs/a/ckpt.pt", 10, 0.050), _run("runs/a/ckpt.pt", 10, 0.030, sampler="ancestral"),  # a's best: 30.00
        _run("runs/b/ckpt_10min.pt", 10, 0.040), _run("runs/b/ckpt.pt", 20, 0.025),
        _run("runs/b/ckpt.pt", 20, 0.020, gauss_snr=0.1),  # b's best has no picture of its own: b.jpg stands in
        _run("runs/a/ckpt.pt", 10, 0.001, n=50),  # best of all, but at another N: the full page only
        _run("runs/s/ckpt.pt", 10, 0.060, command="python train_ddpm.py --schedule linear --T 1000 --pred eps "
                                                  "--minutes 10 --out runs/s"),
        _card("runs/anc/samples.npz", 0.5, step=300, train_minutes=10.0, sampler="ddim", steps=15, nfe=15,
              train=dict(command="python anchor_lucidrains.py --minutes 10 --steps 15 --out runs/anc")),
        _card("runs/st/ckpt.pt", 0.010, kind="consistency", data="mnist", step=800, train_minutes=5.0,
              sampler="consistency", steps=4, nfe=4,
              train=dict(command="python distill.py --teacher runs/b/ckpt.pt --minutes 5 --out runs/st",
                         args=dict(target="ode"))),
        _run("runs/m/ckpt.pt", 3, 0.07, command="python train_ddpm.py --steps 1902 --out runs/m"),  # a step budget
    ] + [_run(f"runs/r{m}/ckpt.pt", m, 0.1 + m / 1000) for m in range(30, 38)]  # eight budgets more: over 10 rows
    with open("results/cards.jsonl", "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in cards)
    code, log = run_here("plots.py", "results", "results/cards.jsonl", "--out", "RESULTS.md")
    assert "wrote RESULTS.md" in log and os.path.join("results", "ALL.md") in log, log
    page, everything = open("RESULTS.md").read(), open("results/ALL.md").read()
    assert "## mnist, 28 px: classifier features, N 100 against mnist:test" in page, page
    assert "`python plots.py results results/cards.jsonl --out RESULTS.md`" in page
    rows = [r.split(" | ") for r in page.splitlines() if r.startswith("| ") and not r.startswith("| method")]
    assert rows[0][0] == "| floor: real mnist:train" and rows[0][2] == "0.40 ± 0.04", rows[0]  # the floor at N 100
    rows = rows[1:]
    assert len(rows) == 10, page  # at most 10, each method's best among them
    by = {(r[0][2:], r[1].split(" (")[0]): r for r in rows}
    assert by["ours", "10 min"][2] == "30.00 ± 3.00" and "ancestral" in by["ours", "10 min"][4]  # a's, not b's 40
    assert by["ours", "20 min"][2] == "20.00 ± 2.00" and by["ours", "20 min"][7] == "[other sampling](results/grids/b.jpg) |"
    assert by["ours", "10 min"][7] == "– |"  # a kept no picture
    assert by["ours", "1,902 steps"][2] == "70.00 ± 7.00"
    assert by["seed recipe (linear β, ε)", "10 min"][5] == "[s](results/cards.jsonl)"
    assert by["lucidrains anchor", "10 min"][2] == "500.00 ± 50.00"  # the worst row, kept as its method's best
    student = by["student, --target ode", "5 min"]
    assert student[1] == "5 min (800 steps) + teacher's 20 min" and student[6] == "EPYC (2 threads), AVX512-bf16"
    assert [float(r[2].split(" ± ")[0]) for r in rows] == sorted(float(r[2].split(" ± ")[0]) for r in rows)  # by KID
    assert "1.00 ± 0.10" not in page and "1.00 ± 0.10" in everything  # the card at another N: the full page only
    assert "0.90 ± 0.09" not in page and "; 1 more at another N" in page
    assert "(grids/b.jpg)" in everything and "[the full page](results/ALL.md)" in page


def test_pages_bad_input_is_one_line(tmp_path):
    card = tmp_path / "cards.jsonl"
    card.write_text(json.dumps(_run("runs/a/ckpt.pt", 10, 0.05)) + "\n" + "oops\n")
    code, out = run_here("plots.py", "results", str(card), "--out", str(tmp_path / "RESULTS.md"), ok=False)
    one_line_error(code, out)
    assert f"{card}:2" in out and not (tmp_path / "RESULTS.md").exists() and not (tmp_path / "results").exists()
    (tmp_path / "page").mkdir()
    card.write_text(json.dumps(_run("runs/a/ckpt.pt", 10, 0.05)) + "\n")
    one_line_error(*run_here("plots.py", "results", str(card), "--out", str(tmp_path / "page"), ok=False))
