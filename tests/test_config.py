"""Config loading: YAML, relative paths, overrides, type and choice checks, --help text."""

from __future__ import annotations

from pathlib import Path

import pytest

from rose.config import describe, load_config
from rose.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_paths_resolve_against_config_file_and_overrides_apply(tmp_path):
    path = _write(tmp_path, "run_dir: out\ndata:\n  pool: [a.jsonl, b.jsonl]\n  validation: {paths: v.json, subtasks: 18}\nselect: {fraction: 0.1}\n")
    cfg = load_config(path, ["select.fraction=0.2", "gradients.dim=128", "data.pool_limit=50"])
    assert cfg.run_dir == str(path.parent / "out")
    assert cfg.data.pool == [str(path.parent / "a.jsonl"), str(path.parent / "b.jsonl")]
    assert cfg.data.validation.paths == [str(path.parent / "v.json")] and cfg.data.validation.subtasks == 18
    assert (cfg.select.fraction, cfg.gradients.dim, cfg.data.pool_limit) == (0.2, 128, 50)
    assert cfg.data.heldout.pairs == "all"  # nested defaults survive a partial section
    assert cfg.lora.r == 128 and cfg.warmup.epochs == 4 and cfg.gradients.dpo_beta == 0.1  # paper defaults


@pytest.mark.parametrize("override,message", [
    ("select.fraction=0", "select.fraction must be a finite number in (0, 1]"),
    ("warmup.fraction=1.5", "warmup.fraction must be a finite number in (0, 1]"),
    ("gradients.projection=fast_jl", "unknown value 'fast_jl'"),
    ("gradients.dim=abc", "expected int"),
    ("nonsense.key=1", "unknown config key(s) nonsense"),
    ("model.dtyp=float32", "unknown config key(s) model.dtyp"),
    ("select", "must look like section.key=value"),
])
def test_bad_values_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override], base={})
    assert message in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_write(tmp_path, "a: [1, 2"))


def test_describe_lists_every_section_and_help():
    text = describe()
    for key in ("model.name", "lora.r", "warmup.fraction", "gradients.projection", "select.fraction", "data.validation.subtasks"):
        assert key in text
    assert "Share of the pool to select" in text
