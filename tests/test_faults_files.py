"""Bad files and places for plots.py, the results page, bench.py and data.py: one line naming the file (and the
line of a card file) and what is wrong, exit code 2, no traceback, and nothing written by a refused command."""
import json
import os

import pytest

from helpers import one_line_error, run_here

SCORE = {"fd": 12.5, "nfe": 10, "step": 100, "extractor": "inception", "ref": "maps:test", "n": 100, "n_ref": 100,
         "sampler": "ddim"}
LEVELS = {"type": "levels", "source": "runs/a/ckpt.pt", "step": 5, "snr": [0.1, 1.0],
          "mse": {"network": [0.5, 0.1], "gaussian": [0.6, 0.2]}, "n": 8, "ref": "maps:test"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # a figure passed where a card file or log belongs
SPEED = {"type": "speed", "task": "train", "model": "tiny", "channels": 1, "size": 28, "precision": "fp32",
         "batch": 32, "img_s": 100.0, "peak_mem_MB": 300.0}


def _file(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _lines(*cards):
    return "".join(json.dumps(c) + "\n" for c in cards)


# (name, the file's content, what the one line must say besides the file's name); every card-reading command
BAD_CARD_FILES = [
    ("not_json", "hello\n", ":1"),
    ("second_line_not_json", _lines(SCORE) + "{oops\n", ":2"),
    ("array", "[1, 2]\n", ":1"),
    ("null", "null\n", ":1"),
    ("string", '"abc"\n', ":1"),
    ("empty", "", "empty"),
    ("blank_lines_only", "\n\n", "empty"),
    ("binary", PNG, "text"),
]
CARD_COMMANDS = [["scores"], ["levels"], ["results"]]


def _cmd(sub, path, tmp_path):
    return ["plots.py", *sub, path] + ([] if sub == ["results"] else ["--out", str(tmp_path / "fig.png")])


@pytest.mark.parametrize("sub", CARD_COMMANDS, ids=lambda s: s[0])
@pytest.mark.parametrize("name,content,says", BAD_CARD_FILES, ids=[c[0] for c in BAD_CARD_FILES])
def test_bad_card_file_is_one_line_naming_file_and_line(tmp_path, sub, name, content, says):
    path = _file(tmp_path, f"{name}.jsonl", content)
    code, out = run_here(*_cmd(sub, path, tmp_path), ok=False)
    one_line_error(code, out)
    assert path in out and says in out, out
    assert not (tmp_path / "fig.png").exists() and "# Results" not in out


@pytest.mark.parametrize("sub", CARD_COMMANDS, ids=lambda s: s[0])
def test_card_path_missing_or_a_folder_is_one_line(tmp_path, sub):
    for path, says in ((str(tmp_path / "none.jsonl"), "does not exist"), (str(tmp_path), "folder")):
        code, out = run_here(*_cmd(sub, path, tmp_path), ok=False)
        one_line_error(code, out)
        assert says in out, out


# (name, cards, the subcommand, what the one line must say): cards that lack or garble what that figure needs
BAD_CARDS = [
    ("levels_without_snr", [{"type": "levels", "source": "x"}], ["levels"], "'snr'"),
    ("levels_snr_a_string", [{**LEVELS, "snr": "abc"}], ["levels"], "'snr'"),
    ("levels_snr_shorter_than_mse", [{**LEVELS, "snr": [0.1]}], ["levels"], "'mse'"),
    ("levels_without_gaussian", [{**LEVELS, "mse": {"network": [0.5, 0.1]}}], ["levels"], "gaussian"),
    ("levels_mse_strings", [{**LEVELS, "mse": {"network": ["a", "b"], "gaussian": [0.6, 0.2]}}], ["levels"], "'mse'"),
    ("scores_fd_a_string", [{**SCORE, "fd": "12.5"}], ["scores"], "'fd'"),
    ("scores_nfe_a_string", [SCORE, {**SCORE, "nfe": "ten"}], ["scores"], "'nfe'"),
    ("scores_cfg_a_string", [{**SCORE, "cfg": "3"}], ["scores"], "'cfg'"),
    ("scores_source_a_number", [{**SCORE, "kind": "ddpm", "source": 5}], ["scores"], "'source'"),
    ("results_extractor_a_list", [{**SCORE, "extractor": ["a"]}], ["results"], "'extractor'"),
    ("results_fd_null", [SCORE, {**SCORE, "fd": None}], ["results"], "fid.py"),
    ("results_train_a_string", [{**SCORE, "train": "x"}], ["results"], "fid.py"),
    ("results_fd_a_string", [{**SCORE, "fd": "12.5"}], ["results"], "'fd'"),
    ("results_n_a_string", [{**SCORE, "n": "ten"}], ["results"], "'n'"),
    ("results_without_n", [{k: v for k, v in SCORE.items() if k != "n"}], ["results"], "'n'"),
    ("results_levels_without_mse", [{"type": "levels", "source": "x"}], ["results"], "'snr'"),
    ("results_levels_snr_shorter", [{**LEVELS, "snr": [0.1]}], ["results"], "'mse'"),
    ("results_speed_without_fields", [{"type": "speed", "task": "train"}], ["results"], "bench.py"),
    ("results_speed_img_s_a_string", [SPEED, {**SPEED, "img_s": "fast"}], ["results"], "bench.py"),
]


@pytest.mark.parametrize("name,cards,sub,says", BAD_CARDS, ids=[c[0] for c in BAD_CARDS])
def test_card_lacking_what_the_figure_needs_is_one_line(tmp_path, name, cards, sub, says):
    path = _file(tmp_path, "cards.jsonl", _lines(*cards))
    code, out = run_here(*_cmd(sub, path, tmp_path), ok=False)
    one_line_error(code, out)
    assert f"{path}:{len(cards)}" in out and says in out, out
    assert not (tmp_path / "fig.png").exists() and "# Results" not in out


def test_good_cards_still_draw_and_make_the_page(tmp_path):
    """The checks pass what fid.py, levels.py and bench.py write (blank lines between cards are skipped)."""
    scores = _file(tmp_path, "scores.jsonl", _lines(SCORE, {**SCORE, "nfe": 20, "fd": 10.0, "cfg": None}) + "\n")
    levels = _file(tmp_path, "levels.jsonl", _lines(LEVELS))
    speed = _file(tmp_path, "speed.jsonl", _lines(SPEED))
    run_here("plots.py", "scores", scores, "--out", str(tmp_path / "s.png"))
    run_here("plots.py", "levels", levels, "--out", str(tmp_path / "l.svg"))
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "l.svg").stat().st_size > 0
    code, page = run_here("plots.py", "results", scores, levels, speed)
    assert "## against maps:test" in page and "## Speed" in page and "## Denoising error" in page, page


def test_results_page_over_many_files_refuses_a_bad_one_before_printing(tmp_path):
    good = _file(tmp_path, "good.jsonl", _lines(SCORE, LEVELS, SPEED))
    bad = _file(tmp_path, "bad.jsonl", _lines(SCORE) + "oops\n")
    code, out = run_here("plots.py", "results", good, good, bad, good, ok=False)
    one_line_error(code, out)
    assert f"{bad}:2" in out and "# Results" not in out and "|" not in out, out


# (name, log.csv, what the one line must say besides the file's name)
BAD_LOGS = [
    ("non_numeric_loss", "step,loss\n1,0.5\n2,abc\n", ":3"),
    ("non_numeric_step", "step,loss\nx,0.5\n", ":2"),
    ("short_row", "step,loss\n1\n", ":2"),
    ("without_loss_column", "step,lr\n1,0.1\n", "loss"),
    ("empty", "", "no rows"),
    ("header_only", "step,loss\n", "no rows"),
    ("binary", PNG, "text"),
]


@pytest.mark.parametrize("name,log,says", BAD_LOGS, ids=[c[0] for c in BAD_LOGS])
def test_loss_plot_of_a_bad_log_csv_is_one_line(tmp_path, name, log, says):
    (tmp_path / "run").mkdir()
    path = _file(tmp_path, "run/log.csv", log)
    code, out = run_here("plots.py", "loss", str(tmp_path / "run"), "--out", str(tmp_path / "fig.png"), ok=False)
    one_line_error(code, out)
    assert path in out and says in out, out
    assert not (tmp_path / "fig.png").exists()


def test_loss_plot_of_a_bad_heldout_csv_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    _file(tmp_path, "run/log.csv", "step,loss\n1,0.5\n2,0.4\n")
    held = _file(tmp_path, "run/heldout.csv", "step,heldout_loss\n2,nope\n")
    code, out = run_here("plots.py", "loss", str(tmp_path / "run"), "--out", str(tmp_path / "fig.png"), ok=False)
    one_line_error(code, out)
    assert f"{held}:2" in out, out
    (tmp_path / "run" / "heldout.csv").write_text("step,heldout_loss\n2,0.3\n")
    run_here("plots.py", "loss", str(tmp_path / "run"), "--out", str(tmp_path / "fig.png"))
    assert (tmp_path / "fig.png").stat().st_size > 0


def _bad_outs(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    return [(str(tmp_path / "fig.bogus"), "bogus"), (str(tmp_path / "fig"), ".png"), (str(tmp_path), "folder"),
            (str(tmp_path / "file.txt" / "fig.png"), "file.txt"),
            (str(tmp_path / "file.txt" / "a" / "fig.png"), "file.txt")]


def test_plots_out_unknown_extension_or_unwritable_is_one_line_before_any_work(tmp_path):
    for out_path, says in _bad_outs(tmp_path):
        # forward with an unknown dataset: the --out check comes first, before the data is read
        for cmd in (["schedules"], ["forward", "--data", "nope"]):
            code, out = run_here("plots.py", *cmd, "--out", out_path, ok=False)
            one_line_error(code, out)
            assert "--out" in out and says in out, out
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]  # nothing written, no .png beside the names given


def test_plots_forward_final_size_not_below_the_image_is_one_line(tmp_path):
    code, out = run_here("plots.py", "forward", "--data", "maps", "--size", "16", "--final-size", "40",
                         "--out", str(tmp_path / "f.png"), ok=False)
    one_line_error(code, out)
    assert "--final-size" in out and not (tmp_path / "f.png").exists()


def test_plots_pixels_of_a_non_checkpoint_is_one_line(tmp_path):
    for ckpt in (_file(tmp_path, "junk.pt", b"not a checkpoint"), _file(tmp_path, "cards.jsonl", _lines(SCORE)),
                 str(tmp_path)):
        one_line_error(*run_here("plots.py", "pixels", "--ckpt", ckpt, "--out", str(tmp_path / "p.png"), ok=False))
    assert not (tmp_path / "p.png").exists()


def test_data_stats_out_unwritable_is_one_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for out_path in (tmp_path / "file.txt" / "grids", tmp_path / "file.txt"):
        code, out = run_here("data.py", "--data", "maps", "--n-maps", "16", "--size", "16", "--stats",
                             "--out", str(out_path), ok=False)
        one_line_error(code, out)
        assert "--out" in out and "file.txt" in out, out


# bench.py: every refusal comes before the matmul peaks (the first measurement), so these runs take no time
BENCH_BAD = [
    (["--models", "bogus"], "tiny"),
    (["--models", "tiny,bogus"], "bogus"),
    (["--models", ""], "--models"),
    (["--models", "tiny,"], "--models"),
    (["--models", "tiny,tiny"], "twice"),
    (["--quick", "--models", "base"], "--quick"),
    (["--precisions", "fp64"], "fp32"),
    (["--precisions", ""], "--precisions"),
    (["--precisions", "fp32,"], "--precisions"),
    (["--precisions", "fp32,fp32"], "twice"),
    (["--precisions", "fp16"], "CUDA"),
    (["--seconds", "-1"], "--seconds"),
    (["--sample-batch", "0"], "--sample-batch"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("flags,says", BENCH_BAD, ids=[" ".join(f[0]) for f in BENCH_BAD])
def test_bench_bad_list_flags_are_one_line_before_any_measurement(flags, says):
    code, out = run_here("bench.py", "--quick", "--seconds", "0.05", "--device", "cpu", *flags, ok=False)
    one_line_error(code, out)
    assert says in out and "matmul peaks" not in out, out


def test_bench_cards_folder_or_unwritable_is_one_line_before_any_measurement(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for cards in (tmp_path, tmp_path / "file.txt" / "speed.jsonl"):
        code, out = run_here("bench.py", "--quick", "--seconds", "0.05", "--models", "tiny", "--device", "cpu",
                             "--cards", str(cards), ok=False)
        one_line_error(code, out)
        assert "--cards" in out and "matmul peaks" not in out, out
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]
