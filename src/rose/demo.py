"""The embedded demo: a synthetic target task generated here, deterministically, with a known answer.

The pool mixes short examples of several distinct skills. The target's preference pairs reward one
of them (the planted skill): the chosen response performs it, the rejected one does not. A working
selector should fill its selection with the planted skill far above that skill's share of the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .config import ModelConfig
from .formats import write_jsonl

WORDS = (
    "apple river stone cloud garden window silver candle forest bridge morning yellow engine rabbit "
    "winter pocket ladder mirror island basket orange thunder meadow pencil harbor blanket violin "
    "shadow copper lantern valley feather marble rocket saddle tunnel walnut anchor button cotton "
    "dragon falcon ginger hammer jacket kettle lemon magnet needle oyster pepper quartz ribbon "
    "spider tiger velvet wagon zebra bottle castle desert circle planet monkey puzzle sugar"
).split()
COUNTRIES = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Canada": "Ottawa",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens",
    "Chile": "Santiago", "Poland": "Warsaw", "Cuba": "Havana", "Ireland": "Dublin", "Austria": "Vienna",
    "Portugal": "Lisbon", "Sweden": "Stockholm", "Thailand": "Bangkok", "Mexico": "Mexico City", "India": "New Delhi",
}

PLANTED = "shout"


def _phrase(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 5)))


def _shout(rng: random.Random) -> tuple[str, str, str]:
    p = _phrase(rng)
    return f"Repeat this in capital letters: {p}", p.upper(), p  # rejected: repeated, not capitalised


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    words = _phrase(rng).split()
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words)), " ".join(words)


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + 1}."


def _capital(rng: random.Random) -> tuple[str, str, str]:
    country, city = rng.choice(sorted(COUNTRIES.items()))
    return f"What is the capital of {country}?", f"The capital of {country} is {city}.", f"I am not sure about {country}."


def _count(rng: random.Random) -> tuple[str, str, str]:
    p = _phrase(rng)
    n = len(p.split())
    return f"How many words are in this text: {p}", f"There are {n} words.", f"There are {n + 2} words."


def _sort(rng: random.Random) -> tuple[str, str, str]:
    nums = rng.sample(range(1, 99), 4)
    return f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}", ", ".join(map(str, sorted(nums))), ", ".join(map(str, nums))


def _first_letter(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(WORDS)
    return f"What is the first letter of the word {w}?", f"The first letter of {w} is {w[0]}.", f"The first letter of {w} is {w[-1]}."


def _rhyme(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(WORDS, 2)
    return f"Write a short line about a {a} and a {b}.", f"The {a} sat beside the {b} all day.", f"{a} {b}."


SKILLS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "shout": _shout, "reverse": _reverse, "add": _add, "capital": _capital,
    "count": _count, "sort": _sort, "first_letter": _first_letter, "line": _rhyme,
}


def _messages(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def write_demo_data(folder: Path, per_skill: int = 20, shots: int = 5, heldout: int = 40, tests: int = 20, seed: int = 0) -> dict[str, Path]:
    """Write pool.jsonl, validation.jsonl (TRL rows), heldout.jsonl and test.jsonl into `folder`."""
    rng = random.Random(seed)
    pool = []
    for skill, make in SKILLS.items():
        for i in range(per_skill):
            prompt, answer, _ = make(rng)
            pool.append({"dataset": skill, "id": f"{skill}_{i}", "messages": _messages(prompt, answer)})
    rng.shuffle(pool)

    def pairs(n: int) -> list[dict]:
        return [dict(zip(("prompt", "chosen", "rejected"), SKILLS[PLANTED](rng))) for _ in range(n)]

    tests_rows = [{"prompt": p["prompt"], "golden_answer": p["chosen"]} for p in pairs(tests)]
    files = {"pool": folder / "pool.jsonl", "validation": folder / "validation.jsonl",
             "heldout": folder / "heldout.jsonl", "test": folder / "test.jsonl"}
    write_jsonl(files["pool"], pool)
    write_jsonl(files["validation"], pairs(shots))
    write_jsonl(files["heldout"], pairs(heldout))
    write_jsonl(files["test"], tests_rows)
    return files


def demo_config(run_dir: Path, files: dict[str, Path]) -> dict:
    """A small LoRA recipe that runs on a laptop CPU in a few minutes."""
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"name": "smollm2-135m-instruct", "max_length": 96},
        "lora": {"r": 8, "alpha": 32, "dropout": 0.05},
        "data": {
            "pool": [str(files["pool"])],
            "validation": {"paths": [str(files["validation"])], "format": "trl", "subtasks": "none"},
            "heldout": {"paths": [str(files["heldout"])], "format": "trl", "subtasks": "none"},
            "test": [str(files["test"])],
        },
        "warmup": {"fraction": 0.05, "epochs": 3, "lr": 3e-4, "batch_size": 4, "micro_batch_tokens": 1024},
        "gradients": {"batch_tokens": 2048},
        "select": {"fraction": 0.05},
        "finetune": {"epochs": 4, "lr": 3e-4, "batch_size": 4, "micro_batch_tokens": 1024},
    }


def demo_dtype(model: ModelConfig, cpu_with_bf16: bool) -> ModelConfig:
    """The demo's model settings for this machine: with model.dtype auto, running on a CPU that
    multiplies bf16 in hardware, bf16 (the demo in about half the time, the same selection);
    otherwise as given."""
    return replace(model, dtype="bfloat16") if model.dtype == "auto" and cpu_with_bf16 else model


def planted_precision(run_dir: Path) -> tuple[float, float]:
    """(share of the selection from the planted skill, that skill's share of the pool)."""
    from .store import read_json

    sources = read_json(run_dir / "selection" / "selection.json")["sources"]
    pool = sum(c["pool"] for c in sources.values())
    return sources[PLANTED]["share"], sources[PLANTED]["pool"] / pool
