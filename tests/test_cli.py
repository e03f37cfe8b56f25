"""The `rose` command: help for every subcommand, and bad input reported in one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rose.cli import STAGE_HELP, main
from rose.store import MANIFEST

COMMANDS = ["run", "demo", "config", *STAGE_HELP]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: rose" in capsys.readouterr().out


def test_top_level_help_names_the_stages():
    out = subprocess.run([sys.executable, "-m", "rose", "--help"], capture_output=True, text=True, check=True).stdout
    assert "warmup -> val-grads -> train-grads -> score -> select -> reference -> finetune -> evaluate" in out


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
