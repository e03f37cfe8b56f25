"""Token lengths of a seeded sample of a pool, for the throughput benchmark (no text leaves here).

    python benchmarks/pool_lengths.py configs/shp.yaml --n 4000 --out .dev/lengths.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rose.config import expand_globs, load_config
from rose.encoding import encode_example
from rose.errors import InputError
from rose.formats import read_pool
from rose.models import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = load_config(args.config)
    pool = read_pool(expand_globs(cfg.data.pool))
    tok = load_tokenizer(cfg.model)
    rows = random.Random(0).sample(pool, min(args.n, len(pool)))
    lengths = []
    for ex in rows:
        try:
            e = encode_example(tok, ex, args.max_len)
        except InputError:
            continue  # a prompt longer than max-len
        lengths.append([e.n_prompt, len(e)])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(lengths))
    total = [t for _, t in lengths]
    print(f"{len(lengths)} examples, mean {sum(total) / len(total):.1f} tokens, max {max(total)}")


if __name__ == "__main__":
    main()
