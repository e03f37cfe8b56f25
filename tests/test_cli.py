"""The `rose` command: help for every subcommand, and bad input reported in one line with exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from rose import __version__
from rose.cli import main, parse_args
from rose.report import wilson_interval
from rose.stages import STAGES
from rose.store import MANIFEST, read_json

COMMANDS = ["run", "demo", "config", "compare", *STAGES]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: rose" in capsys.readouterr().out


def test_top_level_help_names_the_stages():
    out = subprocess.run([sys.executable, "-m", "rose", "--help"], capture_output=True, text=True, check=True).stdout
    assert " -> ".join(STAGES) in out and "base-logprobs" in out


def test_config_keys_lists_defaults(capsys):
    assert main(["config", "--keys"]) == 0
    assert "gradients.dim = 32768" in capsys.readouterr().out


def _config(tmp_path, pool_rows):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(r + "\n" for r in pool_rows), encoding="utf-8")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: out\ndata:\n  pool: [{pool.name}]\n  validation: {{paths: [{val.name}]}}\n"
                   "model: {device: cpu}\nlora: {r: 2, alpha: 8}\n")
    return cfg


def test_malformed_pool_line_fails_cleanly_and_leaves_nothing_complete(tmp_path, capsys):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    cfg = _config(tmp_path, [good, good.replace('"a"}', '"a"'), good])
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rose: error: ") and "pool.jsonl, line 2" in err and "malformed JSON" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "out").rglob(MANIFEST)) or all(
        not json.loads(m.read_text())["complete"] for m in (tmp_path / "out").rglob(MANIFEST))


def test_bad_override_and_missing_config_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = _config(tmp_path, [])
    assert main(["warmup", str(cfg), "warmup.fraction=2"]) == 2
    assert "warmup.fraction must be a finite number in (0, 1]" in capsys.readouterr().err


GOOD_ROW = {"dataset": "d", "id": "d_0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _run_config(tmp_path, pool: bytes | None = None, validation: bytes | None = None, config: str = "", name: str = "run.yaml"):
    """Write a pool, a validation set and a config (extra YAML lines appended) into tmp_path."""
    (tmp_path / "pool.jsonl").write_bytes(pool if pool is not None else (json.dumps(GOOD_ROW) + "\n").encode())
    (tmp_path / "val.jsonl").write_bytes(validation if validation is not None else
                                         (json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n").encode())
    cfg = tmp_path / name
    cfg.write_text("run_dir: out\ndata:\n  pool: [pool.jsonl]\n  validation: {paths: [val.jsonl]}\n"
                   "model: {device: cpu}\nlora: {r: 2, alpha: 8}\n" + config)
    return cfg


def _surrogate_row() -> bytes:
    return json.dumps(GOOD_ROW).replace('"a"}', '"\\udc80"}').encode() + b"\n"


BAD_INPUTS = {
    # case: (pool bytes, validation bytes, extra config, words the one error line must contain)
    "lone surrogate": (_surrogate_row(), None, "", ["pool.jsonl, line 1", "not valid Unicode"]),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000 + b"\n", None, "", ["pool.jsonl, line 1", "nested too deeply"]),
    "identical pairs": (None, b'{"prompt": "q", "chosen": "same", "rejected": "same"}\n', "",
                        ["val.jsonl, line 1, field 'rejected'", "identical chosen and rejected"]),
    "NaN lr": (None, None, "warmup: {lr: .nan}\n", ["run.yaml", "warmup.lr", "finite number"]),
    "negative lr": (None, None, "finetune: {lr: -0.1}\n", ["run.yaml", "finetune.lr"]),
    "zero limit": (None, None, "data: {pool: [pool.jsonl], validation: {paths: [val.jsonl], limit: 0}}\n",
                   ["run.yaml", "data.validation.limit", "positive integer"]),
    "negative size": (None, None, "gradients: {dim: -8}\n", ["run.yaml", "gradients.dim", "positive integer"]),
    "unknown device": (None, None, "model: {device: gpu0}\n", ["run.yaml", "model.device", "unknown device 'gpu0'"]),
    "model error with overlong skip": (None, None, "model: {name: ./no/such/model, overlong: skip}\n",
                                       ["model.name", "model path not found"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    pool, validation, extra, words = BAD_INPUTS[case]
    cfg = _run_config(tmp_path, pool, validation, extra)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rose: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert "the pool is empty" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_config_files_name_the_file(tmp_path, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    listing = tmp_path / "list.yaml"
    listing.write_text("- run_dir: out\n- seed: 1\n" + "- x: 1\n" * 200)
    broken = tmp_path / "broken.yaml"
    broken.write_text("run_dir: out\nseed: [1, 2\n")
    for cfg, words in [(latin1, ["latin1.yaml", "not valid UTF-8"]), (listing, ["list.yaml", "expected a mapping", "got a list"]),
                       (broken, ["broken.yaml, line", "invalid YAML"])]:
        assert main(["run", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words) and len(err) < 300, err  # the config is not echoed


def test_run_dir_that_is_a_file_is_refused(tmp_path, capsys):
    cfg = _run_config(tmp_path)
    (tmp_path / "out").write_text("not a folder")
    assert main(["run", str(cfg)]) == 2
    assert "run_dir" in capsys.readouterr().err and (tmp_path / "out").read_text() == "not a folder"


def test_config_and_data_errors_are_found_before_torch_is_imported(tmp_path):
    """The CLI checks the config and parses every input before the model stack loads."""
    for pool, extra in [(None, "warmup: {lr: .nan}\n"), (_surrogate_row(), "")]:
        cfg = _run_config(tmp_path, pool, None, extra)
        code = ("import sys; from rose.cli import main; rc = main(['run', sys.argv[1]]); "
                "print(rc, 'torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["2", "False"], out


def test_compare_reads_every_few_shot_set_before_torch_is_imported(tmp_path):
    """A sweep's validation set that cannot be read stops `rose compare` at once, naming the file,
    not after the shared GPU work (an HH shot set once did, 20 minutes into the study)."""
    def rows(prompts: str) -> str:
        return "".join(json.dumps({"prompt": q, "chosen": "a", "rejected": "b"}) + "\n" for q in prompts)

    cfg = _run_config(tmp_path, validation=rows("qr").encode(),
                      config='compare: {methods: [rose], shots: {"1": [val.jsonl], "2": [two.jsonl]}, shot_methods: [rose]}\n')
    (tmp_path / "two.jsonl").write_text(rows("qrs"))
    code = ("import sys; from rose.cli import main; rc = main(['compare', sys.argv[1], 'data.validation.subtasks=2']); "
            "print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "two.jsonl, field 'subtasks': 3 prompts cannot be split into 2 equal subtask blocks" in run.stderr, run.stderr
    assert run.stdout.split() == ["2", "False"], run.stdout


def test_bad_input_leaves_a_finished_run_untouched(tiny_run, tmp_path, capsys):
    run_dir, _, _ = tiny_run
    before = {str(m): m.stat().st_mtime_ns for m in run_dir.rglob(MANIFEST)}
    for pool, extra in [(_surrogate_row(), ""), (None, "warmup: {lr: .inf}\n")]:
        cfg = _run_config(tmp_path, pool, None, extra, name="bad.yaml")
        assert main(["run", str(cfg), f"run_dir={run_dir}"]) == 2 and capsys.readouterr().err.startswith("rose: error: ")
    assert {str(m): m.stat().st_mtime_ns for m in run_dir.rglob(MANIFEST)} == before


def test_version_global_flags_after_the_subcommand_and_dashed_overrides(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"rose {__version__}"
    parse = parse_args
    args = parse(["run", "--select.fraction=0.1", "c.yaml", "-q", "--seed", "3", "model.device=cpu"])
    assert (args.config, args.quiet, args.overrides) == ("c.yaml", True, ["select.fraction=0.1", "seed=3", "model.device=cpu"])
    assert parse(["-q", "run", "c.yaml"]).quiet and not parse(["run", "c.yaml"]).quiet
    args = parse(["compare", "c.yaml", "--report-only", "compare.results_json=null", "--seed=1"])
    assert args.report_only and args.overrides == ["compare.results_json=null", "seed=1"]
    assert main(["config", "--select.fraction=0.3", "--seed", "4"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["select"]["fraction"] == 0.3 and resolved["seed"] == 4


def test_a_closed_pipe_ends_quietly():
    """As `rose config --keys | head -1` once head has exited: the read end is closed before rose writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "rose", "config", "--keys"], stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr


def test_a_rerun_prints_the_summary_where_its_files_are_and_no_library_noise(tiny_run, tmp_path):
    """`rose run` on a finished run (every stage reused) in a fresh process, as a user sees it."""
    run_dir, config, _ = tiny_run
    shutil.copytree(run_dir, tmp_path / "run")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(config, run_dir=str(tmp_path / "run")))))  # JSON is YAML
    done = subprocess.run([sys.executable, "-m", "rose", "run", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Loading weights" not in done.stderr, done.stderr
    summary = read_json(tmp_path / "run/summary.json")
    lo, hi = wilson_interval(summary["heldout_pref_acc"], summary["n_pairs"])
    assert f"heldout_pref_acc 95% CI  {lo:.4f} to {hi:.4f} (Wilson score interval over {summary['n_pairs']} pairs)" in done.stdout
    assert f"selection: {tmp_path / 'run/selection/selected.jsonl'}\n" in done.stdout
    assert f"report: {tmp_path / 'run/report.md'}\n" in done.stdout


def test_the_demo_runs_in_bf16_only_where_the_cpu_multiplies_bf16_and_the_user_left_dtype_auto():
    from rose.config import ModelConfig
    from rose.demo import demo_dtype

    assert demo_dtype(ModelConfig(), cpu_with_bf16=True).dtype == "bfloat16"
    assert demo_dtype(ModelConfig(), cpu_with_bf16=False).dtype == "auto"  # float32 there (pick_dtype)
    assert demo_dtype(ModelConfig(dtype="float32"), cpu_with_bf16=True).dtype == "float32"  # the user's choice stands
