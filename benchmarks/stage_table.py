"""Per-stage wall time and throughput of finished runs, side by side (two models on one config, say).

    python benchmarks/stage_table.py runs/shp runs/shp-gemma3 --out docs/benchmarks/stages_shp.json

Each stage's manifest holds its seconds and, for the stages that pass examples through the model,
the work it did (`work`: examples, tokens and logit positions; a gradient stage counts every
example once per checkpoint). The table gives seconds, examples/s and tokens/s per stage and run,
with the model and dtype from each run's `config.yaml`; stages a run reused from an earlier run
show that run's time. The JSON keeps every number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rose.stages import STAGES
from rose.store import MANIFEST


def stage_rows(run_dir: Path) -> dict[str, dict]:
    """{stage: seconds, peak GPU memory and, where the manifest has `work`, its counts and rates}."""
    rows = {}
    for name, stage in STAGES.items():
        file = run_dir / stage.folder / MANIFEST
        if not file.is_file():
            continue
        manifest = json.loads(file.read_text())
        seconds, work = manifest["seconds"], manifest.get("work")
        row = {"seconds": seconds, "peak_gpu_gb": manifest.get("peak_gpu_gb")}
        if work:
            row |= {**work, "examples_per_s": work["examples"] / seconds, "tokens_per_s": work["tokens"] / seconds}
        if "checkpoint_seconds" in manifest:  # gradient stages: the first checkpoint carries the process's start
            row["checkpoint_seconds"] = manifest["checkpoint_seconds"]
        rows[name] = row
    return rows


def run_label(run_dir: Path) -> dict:
    """The run's model and dtype, as its saved config gives them."""
    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    return {"run_dir": str(run_dir), "model": model["name"], "dtype": model.get("dtype")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="Finished run directories.")
    parser.add_argument("--out", help="Write the numbers as JSON here.")
    args = parser.parse_args()
    runs = [{**run_label(d), "stages": stage_rows(d)} for d in args.runs]
    for i, run in enumerate(runs):
        print(f"run {i + 1}: {run['model']} ({run['dtype']}), {run['run_dir']}")
    print(f"{'stage':14s}" + "".join(f" | {'run ' + str(i + 1) + ' s':>9s} {'ex/s':>8s} {'tok/s':>9s}" for i in range(len(runs))))
    for name in STAGES:
        cells = []
        for run in runs:
            r = run["stages"].get(name)
            if r is None:
                cells.append(f" | {'':>9s} {'':>8s} {'':>9s}")
            elif "examples" in r:
                cells.append(f" | {r['seconds']:9.1f} {r['examples_per_s']:8.1f} {r['tokens_per_s']:9.0f}")
            else:
                cells.append(f" | {r['seconds']:9.1f} {'':>8s} {'':>9s}")
        print(f"{name:14s}" + "".join(cells))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(runs, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
