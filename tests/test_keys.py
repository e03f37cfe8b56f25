"""Stage keys from config and input digests alone (no files, no model): what changes which stage."""

from __future__ import annotations

from rose.config import load_config
from rose.keys import InputDigests, input_digests, stage_keys
from rose.stages import STAGES

DIGESTS = InputDigests(pool=(("pool.jsonl", "aa"),), validation=(("val.jsonl", "bb"),), evaluation=(("test.json", "cc"),))


def keys(*overrides: str, digests: InputDigests = DIGESTS) -> dict[str, str]:
    return stage_keys(load_config(None, list(overrides)), digests, {name: s.key for name, s in STAGES.items()})


def changed(a: dict, b: dict) -> set[str]:
    return {name for name in a if a[name] != b[name]}


def test_keys_cover_every_stage_and_are_stable():
    assert list(keys()) == list(STAGES) and keys() == keys()
    assert len(set(keys().values())) == len(STAGES)


def test_each_change_reaches_its_stage_and_those_after_it_only():
    base = keys()
    assert changed(base, keys("select.fraction=0.1")) == {"select", "finetune", "evaluate"}
    assert changed(base, keys("finetune.lr=1e-3")) == {"finetune", "evaluate"}
    assert changed(base, keys("finetune.seed=1")) == {"finetune", "evaluate"}  # another fine-tune of the same selection
    assert changed(base, keys("warmup.lr=1e-3")) == {"warmup", "val-grads", "train-grads", "score", "select", "finetune", "evaluate"}
    assert changed(base, keys("gradients.dpo_beta=0.2")) == {"val-grads", "score", "select", "finetune", "evaluate"}
    assert changed(base, keys("gradients.dim=1024")) == {"val-grads", "train-grads", "score", "select", "finetune", "evaluate"}
    evaluation = InputDigests(DIGESTS.pool, DIGESTS.validation, (("test.json", "dd"),))
    assert changed(base, keys(digests=evaluation)) == {"base-logprobs", "evaluate"}  # a new test set recomputes no gradients
    validation = InputDigests(DIGESTS.pool, (("val.jsonl", "ee"),), DIGESTS.evaluation)
    assert changed(base, keys(digests=validation)) == {"base-logprobs", "val-grads", "score", "select", "finetune", "evaluate"}


def test_the_model_folders_tokenizer_and_config_files_are_in_every_key(tmp_path):
    """A model folder whose tokenizer changes under the same name (a GGUF converted again after a
    wrong conversion, a local folder overwritten) makes every stage stale; its weights are not read."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text('{"model": "chars"}')
    (folder / "model.safetensors").write_text("weights")
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"model.name={folder}"])
    before = input_digests(config, folder)
    assert [name for name, _ in before.model] == ["config.json", "tokenizer.json"]
    (folder / "model.safetensors").write_text("other weights")
    assert input_digests(config, folder) == before
    (folder / "tokenizer.json").write_text('{"model": "bpe"}')
    after = input_digests(config, folder)
    assert changed(keys(f"model.name={folder}", digests=before), keys(f"model.name={folder}", digests=after)) == set(STAGES)
    assert input_digests(config, None).model == ()  # a hub id that is not on this machine: its name alone


def test_what_does_not_change_results_is_not_in_the_keys():
    base = keys()
    for override in ("model.device=cpu", "warmup.resume_every=7", "gradients.batch_tokens=999", "model.compile_blocks=false",
                     "model.shard=fsdp", "compare.random_seeds=[5]",
                     "compare.finetune_seeds=[0,4]"):  # a sharded model gives the same results (test_fsdp.py)
        assert keys(override) == base, override


def test_methods_share_what_they_compute_alike():
    rose, less = keys("select.method=rose"), keys("select.method=less")
    assert changed(rose, less) == {"val-grads", "score", "select", "finetune", "evaluate"}  # one warm-up, one set of pool gradients
    exact = keys("gradients.projection=none", "select.method=less")
    assert exact["train-grads"] != keys("gradients.projection=none")["train-grads"]  # exact cosines are with each method's targets
    random0, random1 = keys("select.method=random"), keys("select.method=random", "select.seed=1")
    assert changed(random0, random1) == {"score", "select", "finetune", "evaluate"}
    assert keys("select.method=rose", "select.seed=1") == rose  # the seed means nothing to ROSE
    validation = InputDigests(DIGESTS.pool, (("val.jsonl", "ee"),), DIGESTS.evaluation)
    assert "score" in changed(keys("select.method=bm25"), keys("select.method=bm25", digests=validation))  # bm25 reads the validation set
    assert "score" not in changed(keys("select.method=random"), keys("select.method=random", digests=validation))
