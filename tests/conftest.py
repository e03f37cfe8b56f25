"""Shared fixtures: the real SmolLM2 (small LoRA ranks), the real data bundle when present, demo data."""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that wait for each other sleep instead of spinning. On a busy machine a spinning thread
# holds the core that the thread it waits for needs: SmolLM2 forwards ran 2-3x slower under load with two
# spinning threads (10 s against 4-5 s). Read when torch loads OpenMP, so set before torch is imported;
# subprocesses (torchrun, the killed run) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker gets its share of the cores: two workers with two threads each
# would oversubscribe a 2-core machine, and every op would wait for a descheduled thread.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

from rose.config import LoraConfig, ModelConfig, load_config  # noqa: E402
from rose.demo import demo_config, write_demo_data  # noqa: E402
from rose.models import add_lora, load_model, load_tokenizer  # noqa: E402
from rose.stages import STAGES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _find_data() -> Path | None:
    """The read-only data bundle: $ROSE_SHARED_DATA, or ../shared/data beside the checkout."""
    for candidate in (os.environ.get("ROSE_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "README.md").is_file():
            return Path(candidate)
    return None


SHARED = _find_data()
NO_DATA = "data bundle not found (../shared/data beside the checkout, or $ROSE_SHARED_DATA)"
needs_data = pytest.mark.skipif(SHARED is None, reason=NO_DATA)


@pytest.hookimpl(tryfirst=True)  # before xdist groups the tests and `-m` deselects them
def pytest_collection_modifyitems(items) -> None:
    """The tests that read `finished_run` (real SmolLM2, about a minute) are slow, and share one xdist
    worker so that the run is computed once (`make test` runs pytest with `--dist loadgroup`)."""
    for item in items:
        if "finished_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smollm2_run"))
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly when the tests on real data did not run: a green suite without them proves less."""
    if SHARED is None:
        skipped = [r for r in terminalreporter.stats.get("skipped", []) if NO_DATA in str(r.longrepr)]
        terminalreporter.write_sep("!", f"{len(skipped)} TESTS ON REAL DATA DID NOT RUN: {NO_DATA}", red=True, bold=True)


@pytest.fixture(scope="session")
def shared() -> Path:
    if SHARED is None:
        pytest.skip(NO_DATA)
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def base_model():
    """SmolLM2-135M-Instruct in float32 on CPU, frozen."""
    return load_model(ModelConfig(dtype="float32", device="cpu"))


def tiny_llama(vocab_size: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A 2-layer, 32-wide Llama with random weights, built offline from its config: for behaviour
    that does not depend on what a model knows (training, resuming, mixed precision) at a small
    fraction of SmolLM2's cost. `vocab_size` covers the tokenizer the examples were encoded with."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """`tiny_llama` saved as a model folder (with SmolLM2's tokenizer and chat template), for
    `model.name`: the whole pipeline on it takes seconds where SmolLM2 takes minutes."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    """A 32-wide model's ops are too small to split between threads: with two, every op waits for
    both to be scheduled, which under CPU load costs far more than the work (15 s against 1 s here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lora_model(dtype: str = "float32", r: int = 4, seed: int = 0):
    """A fresh SmolLM2 with LoRA whose B matrices are non-zero, so policy != reference."""
    torch.manual_seed(seed)
    model = add_lora(load_model(ModelConfig(dtype=dtype, device="cpu")), LoraConfig(r=r, alpha=4 * r, dropout=0.1))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model.eval()


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    return write_demo_data(tmp_path_factory.mktemp("demo"), per_skill=6, shots=4, heldout=8, tests=4)


FOLDERS = [stage.folder for stage in STAGES.values()]


def tiny_config(run_dir, files, **overrides):
    """The demo recipe shrunk for tests: rank 4, 2 warm-up epochs, 2048 projected dims, 1/8 selected."""
    base = demo_config(run_dir, files)
    base["lora"] = {"r": 4, "alpha": 16, "dropout": 0.0}
    base["warmup"].update(fraction=0.1, epochs=2)
    base["finetune"].update(epochs=1)
    base["gradients"].update(dim=2048, shard_size=16)
    base["select"]["fraction"] = 0.125
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()], base=base)


def llama_config(run_dir, files, model_dir, **overrides):
    """`tiny_config` on the tiny random Llama saved at `model_dir` (`tiny_model_dir`)."""
    return tiny_config(run_dir, files, **{"model.name": str(model_dir), **overrides})


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, demo_files):
    """A complete pipeline run on real SmolLM2 with the tiny recipe: (run_dir, config, run). For tests
    of what the real model does (the planted skill is found, log-probs of its own forward pass)."""
    from rose.pipeline import run_stages

    run_dir = tmp_path_factory.mktemp("run")
    config = tiny_config(run_dir, demo_files)
    return run_dir, config, run_stages(config)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, demo_files, tiny_model_dir):
    """The same complete run on the tiny random Llama, in seconds: (run_dir, config, run). For tests
    of what the pipeline does with any model (stages, reuse, resuming, processes, reports, errors)."""
    from rose.pipeline import run_stages

    run_dir = tmp_path_factory.mktemp("tiny-run")
    config = llama_config(run_dir, demo_files, tiny_model_dir)
    return run_dir, config, run_stages(config)
