"""Model resolution: the built-in GGUF cache, local folders, and clear errors for bad names and files."""

from __future__ import annotations

import shutil
import time

import pytest

from rose.config import ModelConfig
from rose.errors import InputError
from rose.models import _builtin_gguf, cache_root, load_model, resolve_model


def test_builtin_resolves_to_a_cached_safetensors_folder_that_loads_fast():
    folder = resolve_model("smollm2-135m-instruct")
    assert folder.startswith(str(cache_root())) and (shutil.os.path.isfile(f"{folder}/model.safetensors"))
    start = time.perf_counter()
    model = load_model(ModelConfig(name=folder, device="cpu"))
    assert time.perf_counter() - start < 30 and model.config.hidden_size == 576
    assert not any(p.requires_grad for p in model.parameters())


def test_unknown_names_and_missing_paths(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    with pytest.raises(InputError, match="not a built-in model") as e:
        load_model(ModelConfig(name="nobody/no-such-model"))
    assert e.value.field == "model.name"
    with pytest.raises(InputError, match="model path not found"):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(InputError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_truncated_gguf_and_safetensors_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("ROSE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(_builtin_gguf("smollm2-135m-instruct").read_bytes()[:1_000_000])
    with pytest.raises(InputError, match="cannot read GGUF file") as e:
        resolve_model(str(gguf))
    assert e.value.path == str(gguf)
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [".lock"]  # no half-written model folder
    monkeypatch.delenv("ROSE_CACHE")
    broken = tmp_path / "broken"
    shutil.copytree(resolve_model("smollm2-135m-instruct"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5_000_000])
    with pytest.raises(InputError, match="cannot load model weights"):
        load_model(ModelConfig(name=str(broken), device="cpu"))
