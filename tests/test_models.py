"""Model resolution: the built-in GGUF cache, local folders, the Hugging Face cache without network,
model.kwargs, LoRA targets, and clear errors for bad names and files."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from rose.config import LoraConfig, ModelConfig
from rose.errors import ConfigError, InputError
from rose.models import (
    TOKENIZER_CHECKED,
    TOKENIZER_PROBE,
    _builtin_gguf,
    _convert_gguf,
    _gguf_adds_bos,
    add_lora,
    cache_root,
    check_converted_tokenizer,
    compile_lora_free_blocks,
    load_model,
    load_tokenizer,
    pretrained_options,
    resolve_model,
)


def test_builtin_resolves_to_a_cached_safetensors_folder_that_loads_fast():
    folder = resolve_model("smollm2-135m-instruct")
    assert folder.startswith(str(cache_root())) and (shutil.os.path.isfile(f"{folder}/model.safetensors"))
    start = time.perf_counter()
    model = load_model(ModelConfig(name=folder, device="cpu"))
    assert time.perf_counter() - start < 30 and model.config.hidden_size == 576
    assert not any(p.requires_grad for p in model.parameters())


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a hub endpoint nothing listens on; opening any other
    connection, or calling from_pretrained on a hub id, fails the test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port, closed
    real = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)
    return tmp_path / "hf-cache"


def _never_called(*args, **kwargs):
    raise AssertionError("from_pretrained was asked for an id the hub cannot serve (minutes of retries)")


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_that_is_neither_cached_nor_reachable_fails_at_once_with_a_hint(no_hub, monkeypatch, offline):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _never_called)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never_called)
    for load in (load_tokenizer, load_model):
        with pytest.raises(InputError, match="not in the local Hugging Face cache .* cannot be reached") as e:
            load(ModelConfig(name="nobody/no-such-model", device="cpu"))
        assert e.value.field == "model.name" and "HF_HUB_OFFLINE=1" in str(e.value) and "\n" not in str(e.value)
        assert ("HF_HUB_OFFLINE is set" in str(e.value)) == offline


def test_a_cached_hub_id_loads_from_the_cache_without_the_network(no_hub):
    """A snapshot in the Hugging Face cache layout (refs/main -> snapshots/<commit>/) is used as a
    local folder: no connection is opened, not even to probe the hub."""
    snapshot = no_hub / "models--someone--tiny-chat" / "snapshots" / ("a" * 40)
    shutil.copytree(resolve_model("smollm2-135m-instruct"), snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    (no_hub / "models--someone--tiny-chat" / "refs").mkdir()
    (no_hub / "models--someone--tiny-chat" / "refs" / "main").write_text("a" * 40)
    assert resolve_model("someone/tiny-chat") == str(snapshot)
    assert load_tokenizer(ModelConfig(name="someone/tiny-chat")).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(InputError, match="not a built-in model") as e:
        resolve_model("not a/valid id")
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


def test_a_folder_without_a_tokenizer_is_a_model_error(tmp_path):
    shutil.copy(f"{resolve_model('smollm2-135m-instruct')}/config.json", tmp_path)
    with pytest.raises(InputError, match="not loadable") as e:
        load_tokenizer(ModelConfig(name=str(tmp_path)))
    assert e.value.field == "model.name"


def _tiny_folder(tmp_path, config_class=transformers.LlamaConfig):
    config = config_class(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def test_model_kwargs_reach_from_pretrained(tmp_path):
    folder = _tiny_folder(tmp_path)
    model = load_model(ModelConfig(name=folder, device="cpu", kwargs={"attn_implementation": "eager", "torch_dtype": "bfloat16"}))
    assert model.config._attn_implementation == "eager" and model.dtype == torch.bfloat16
    assert load_model(ModelConfig(name=folder, device="cpu", dtype="float64")).dtype == torch.float64


def test_a_quantization_mapping_becomes_its_config_object_and_bad_kwargs_are_config_errors():
    cpu = torch.device("cpu")
    options = pretrained_options(ModelConfig(kwargs={"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}), cpu)
    assert isinstance(options["quantization_config"], transformers.BitsAndBytesConfig) and options["quantization_config"].load_in_4bit
    assert options["device_map"] == {"": "cpu"}  # a quantized model is placed as it loads
    bad = {
        "needs a quant_method": {"quantization_config": {"load_in_4bit": True}},
        "Unknown quantization type": {"quantization_config": {"quant_method": "no-such-method"}},
        "not a torch dtype": {"dtype": "float33"},
        "set model.revision": {"revision": "main"},
    }
    for message, kwargs in bad.items():
        with pytest.raises(ConfigError, match=message):
            pretrained_options(ModelConfig(kwargs=kwargs), cpu)
    with pytest.raises(ConfigError, match="dtype is set twice"):
        pretrained_options(ModelConfig(dtype="float32", kwargs={"torch_dtype": "bfloat16"}), cpu)


def test_named_lora_targets_are_kept_and_lora_free_blocks_found_by_what_they_are(tmp_path):
    """Users may still name modules; compile_lora_free_blocks leaves every attention block eager
    whatever its name (GPT-NeoX calls it `attention`) and finds the final norm by its class."""
    model = load_model(ModelConfig(name=_tiny_folder(tmp_path), device="cpu"))
    named = add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    assert {n.split(".")[-4] for n, p in named.named_parameters() if p.requires_grad} == {"q_proj", "v_proj"}
    config = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    neox = add_lora(transformers.AutoModelForCausalLM.from_config(config), LoraConfig(r=2, alpha=4, target_modules=["dense_h_to_4h"]))
    assert compile_lora_free_blocks(neox) == 2 * 4 + 1  # per layer: 2 norms, 2 dropouts (not attention, not the LoRA MLP); final_layer_norm
    decoder = neox.get_base_model().get_decoder()
    compiled = {n for n, m in decoder.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert "final_layer_norm" in compiled and not any(n.endswith(".attention") for n in compiled)
    assert not any(n.endswith(".mlp") for n in compiled)  # it holds LoRA here


@pytest.mark.parametrize("given", ["relative", "hub id"])
def test_saved_adapters_name_the_base_model_the_user_gave_and_load_with_peft(tmp_path, monkeypatch, no_hub, given):
    """Warm-up checkpoints and the fine-tuned adapter are written by `train_lora` through peft:
    adapter_config.json must name the model as given (a hub id, not its snapshot folder; a folder
    as an absolute path), so that AutoPeftModelForCausalLM rebuilds the trained model from another
    working directory, with the logits of the model that was trained."""
    from peft import AutoPeftModelForCausalLM

    from rose.config import TrainConfig
    from rose.distributed import Dist
    from rose.encoding import Encoded
    from rose.store import read_json
    from rose.train import train_lora

    folder = _tiny_folder(tmp_path)
    if given == "hub id":  # the Hugging Face cache layout, read offline
        snapshot = no_hub / "models--someone--tiny" / "snapshots" / ("b" * 40)
        shutil.copytree(folder, snapshot)
        (no_hub / "models--someone--tiny" / "refs").mkdir()
        (no_hub / "models--someone--tiny" / "refs" / "main").write_text("b" * 40)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        name, expected = "someone/tiny", "someone/tiny"
    else:
        monkeypatch.chdir(tmp_path)
        name, expected = "tiny", folder
    model = add_lora(load_model(ModelConfig(name=name, device="cpu", dtype="float32")), LoraConfig(r=2, alpha=8, dropout=0.0))
    rows = [Encoded(tuple(range(3 + i, 13 + i)), 4) for i in range(4)]
    settings = TrainConfig(epochs=2, lr=1e-2, batch_size=2, micro_batch_tokens=64)
    checkpoints = train_lora(model, rows, settings, tmp_path / "out", 0, 0, Dist(), save_checkpoints=True, log=lambda _: None)
    assert len(checkpoints) == 2
    for ckpt in checkpoints:
        assert read_json(ckpt.adapter / "adapter_config.json")["base_model_name_or_path"] == expected
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(checkpoints[-1].adapter)).eval()
    ids = torch.tensor([list(range(3, 20))])
    with torch.no_grad():
        trained, reloaded = model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits
        base = model.get_base_model()
        with model.disable_adapter():
            untrained = base(input_ids=ids).logits
    assert not torch.allclose(trained, untrained, atol=1e-4)  # training moved the adapter, so the check below means something
    torch.testing.assert_close(reloaded, trained)


def _char_tokenizer():
    """A real fast tokenizer with no merges: one token per character, as a broken GGUF conversion gives."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<bos>", "<eos>", *sorted(set(TOKENIZER_PROBE))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def test_a_wrongly_converted_gguf_tokenizer_is_refused(tokenizer, tmp_path):
    """SmolLM2's own converted tokenizer passes; one token per character, a missing BOS the GGUF asks
    for, or ids that change on reload are refused, naming the file."""
    gguf = tmp_path / "m.gguf"
    check_converted_tokenizer(tokenizer, tokenizer, gguf, adds_bos=False)
    chars = _char_tokenizer()
    assert len(chars(TOKENIZER_PROBE)["input_ids"]) == len(TOKENIZER_PROBE)
    with pytest.raises(InputError, match="of 80 characters into 80 tokens") as e:
        check_converted_tokenizer(chars, chars, gguf, adds_bos=False)
    assert e.value.path == str(gguf)
    with pytest.raises(InputError, match="adds a BOS token, but it does not"):
        check_converted_tokenizer(tokenizer, tokenizer, gguf, adds_bos=True)
    with pytest.raises(InputError, match="reloading it changes the token ids"):
        check_converted_tokenizer(tokenizer, chars, gguf, adds_bos=False)


@pytest.mark.slow
def test_a_folder_converted_before_the_tokenizer_check_is_checked_and_converted_again_if_wrong(tmp_path, caplog):
    """A converted folder from before the check (no marker): kept, and marked, if its tokenizer is
    right; removed and converted again if it is not (a Gemma 3 folder from transformers 5.17)."""
    gguf, cached = _builtin_gguf("smollm2-135m-instruct"), Path(resolve_model("smollm2-135m-instruct"))
    old = tmp_path / "old"
    old.mkdir()
    for f in cached.iterdir():
        if f.name != TOKENIZER_CHECKED:
            (old / f.name).symlink_to(f)  # the 540 MB weights are not copied
    assert _convert_gguf(gguf, old) == old and (old / TOKENIZER_CHECKED).read_text().strip() == transformers.__version__
    assert (old / "model.safetensors").is_symlink()  # kept as it was
    (old / TOKENIZER_CHECKED).unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (old / name).unlink()
    _char_tokenizer().save_pretrained(old)
    with caplog.at_level("WARNING", logger="rose"):
        _convert_gguf(gguf, old)
    assert "converting it again" in caplog.text and "into 80 tokens" in caplog.text
    assert not (old / "model.safetensors").is_symlink() and (old / TOKENIZER_CHECKED).is_file()
    assert AutoTokenizer.from_pretrained(old)(TOKENIZER_PROBE)["input_ids"] == AutoTokenizer.from_pretrained(cached)(TOKENIZER_PROBE)["input_ids"]


def test_the_gguf_bos_flag_is_read_from_the_file():
    assert _gguf_adds_bos(_builtin_gguf("smollm2-135m-instruct")) is False  # ChatML: no BOS
