"""The `rose` command: parse arguments, build a RunConfig, call the pipeline. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .config import RunConfig, describe, load_config, to_dict
from .errors import RoseError
from .inputs import RunInputs, check_run_dir
from .selectors import SELECTORS, get_selector
from .stages import STAGES, inputs_read_by, stages_for

DESCRIPTION = f"""\
rose: pick the few training examples that make an LLM better at one target task (ROSE).

Stages (each writes a folder of the run directory and is skipped when already complete):
  {" -> ".join(STAGES)}
(selection methods without gradients skip {", ".join(n for n, s in STAGES.items() if s.gradients)}:
 select.method={"|".join(n for n, s in SELECTORS.items() if not s.uses_gradients)})

Examples:
  rose demo                                   # the built-in synthetic task, on CPU in minutes
  rose run configs/shp.yaml                   # every stage
  rose run configs/shp.yaml data.pool_limit=2000 --select.fraction=0.1
  rose score configs/shp.yaml                 # one stage (earlier ones must be done)
  torchrun --nproc-per-node 4 -m rose run configs/shp.yaml
  rose config --keys                          # every config key, its default and meaning
"""


def _add_config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help="YAML config file (paths in it are relative to it).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Override config keys, e.g. select.fraction=0.1 --model.device=cpu")


GLOBAL_FLAGS = ("-q", "--quiet")


def config_overrides(argv: list[str]) -> list[str]:
    """The command line in the order argparse needs: global flags first (they may follow the
    subcommand), then the rest, then every config override, `section.key=value`, `--section.key=value`
    or `--section.key value`, as `section.key=value` (never taken for the config file)."""
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    flags, rest, overrides, i = [], [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token.removeprefix("--").split("=", 1)[0]
        if token in GLOBAL_FLAGS:
            flags.append(token)
        elif name.split(".")[0] not in sections or not (token.startswith("--") or "=" in token):
            rest.append(token)
        elif "=" in token or i + 1 == len(argv):
            overrides.append(token.removeprefix("--"))  # a missing value is load_config's to report
        else:
            overrides.append(f"{name}={argv[i + 1]}")
            i += 1
        i += 1
    return flags + rest + overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rose", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors (before or after the command).")
    parser.add_argument("--version", action="version", version=f"rose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="Run every stage of the pipeline.",
                       description="Run every stage; stages whose key (config and inputs) is unchanged are reused.",
                       epilog="Config keys: `rose config --keys`.")
    _add_config_args(p)
    for name, text in ((name, stage.help) for name, stage in STAGES.items()):
        _add_config_args(sub.add_parser(name, help=text, description=text))
    p = sub.add_parser("compare", help="Every selection method at the same budget, plus budget and few-shot sweeps.",
                       description="Run ROSE, LESS, random (several seeds), BM25, embedding similarity and the full pool "
                                   "(compare.methods), fine-tune each selection identically, evaluate, and write "
                                   "run_dir/compare/report.md with plots. Shared stages are computed once; reruns resume. "
                                   "Several processes (one per GPU) may share one comparison.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--shared-only", action="store_true",
                      help="Only compute the shared and largest work (warm-up, pool gradients, the full-pool fine-tune), "
                           "e.g. under torchrun on all GPUs before starting one worker per GPU.")
    mode.add_argument("--report-only", action="store_true",
                      help="Run nothing: rewrite report.md, the plots and the results JSON (compare.results_json) from "
                           "run_dir/compare/results.json (e.g. one copied back from a GPU machine).")
    _add_config_args(p)
    p = sub.add_parser("demo", help="Run the built-in synthetic task end to end (SmolLM2 on CPU, a few minutes).",
                       description="Generate a synthetic pool with a planted skill and a preference set that rewards it, run "
                                   "every stage, and report how much of the selection comes from the planted skill.")
    p.add_argument("--run-dir", default="runs/demo", help="Where to write the demo run (default: runs/demo).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Override demo config keys.")
    p = sub.add_parser("config", help="Print the resolved config, or every key with --keys.")
    _add_config_args(p, optional=True)
    p.add_argument("--keys", action="store_true", help="List every config key with its default and meaning.")
    return parser


def _setup_logging(quiet: bool) -> None:
    """rose's own log lines; the libraries' deprecation notices, advice and weight-loading bars are
    hidden (their errors still show). Set before transformers is imported, which reads the variables."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "accelerate", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=r"(transformers|peft|accelerate|torch)(\.|$)")


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import demo_config, demo_dtype, planted_precision, write_demo_data
    from .models import native_bf16_cpu, pick_device
    from .pipeline import run_stages, summarize
    from .report import summary_rows, table

    started = time.perf_counter()
    run_dir = Path(args.run_dir)
    files = write_demo_data(run_dir / "data")
    config = load_config(None, args.overrides, base=demo_config(run_dir, files))
    on_cpu = pick_device(config.model.device).type == "cpu"
    if (model := demo_dtype(config.model, on_cpu and native_bf16_cpu())) != config.model:
        logging.getLogger("rose").info("demo: bfloat16 on this CPU, which multiplies bf16 in hardware (model.dtype=float32 "
                                       "for float32)")
        config = dataclasses.replace(config, model=model)
    run = run_stages(config)
    precision, base_rate = planted_precision(run_dir)
    summary = summarize(run, {
        "planted_precision": precision, "base_rate": base_rate, "total_seconds": time.perf_counter() - started,
        "notes": [f"Planted skill: `shout`. Planted precision {precision:.3f} vs base rate {base_rate:.3f} "
                  f"({precision / base_rate:.1f}x)."],
    })
    print(table(summary_rows(summary)))


def _run_compare(config, shared_only: bool, report_only: bool) -> None:
    from .compare import prepare_shared, run_compare
    from .distributed import Dist
    from .errors import RunDirError
    from .report import compare_plots, method_summary, render_compare, sweep_summary, table
    from .store import atomic_write_text, read_json, write_json

    out = Path(config.run_dir) / "compare"

    def write_report(results: dict) -> None:
        """report.md, plots and the results JSON: rewritten after every variant, so an interrupted
        comparison still leaves an up-to-date record of what finished."""
        images = compare_plots(results, out, config.compare.budget_methods, config.compare.shot_methods)
        sweeps = {"budget": config.compare.budget_methods, "shots": config.compare.shot_methods}
        atomic_write_text(out / "report.md", render_compare(results, f"rose compare: {config.run_dir}", images, sweeps))
        write_json(config.compare.results_json or out / "methods.json",
                   {"run_dir": config.run_dir, "methods": method_summary(results), "budgets": sweep_summary(results, "budget"),
                    "shots": sweep_summary(results, "shots"),
                    "variants": results})

    if report_only:
        if not (out / "results.json").is_file():
            raise RunDirError(f"{out / 'results.json'}: no results to report; run `rose compare` first")
        write_report(read_json(out / "results.json"))
        print(f"report: {out / 'report.md'}")
        return
    dist = Dist.from_env()
    if shared_only:
        prepare_shared(config, dist)
        return
    results = run_compare(config, on_result=write_report, dist=dist)
    if not dist.is_main:
        return
    write_report(results)
    summary = method_summary(results)
    print(table([(m, f"acc {e['heldout_pref_acc']:.4f}  margin {e['reward_margin']:.3f}  n={e['n_selected']}")
                 for m, e in summary.items()]))
    print(f"report: {out / 'report.md'}")
    failed = [name for name, r in results.items() if "failed" in r]
    if failed:  # the others finished and are reported; the run still says that it is not whole
        raise RoseError(f"compare: {len(failed)} of {len(results)} variants failed ({', '.join(failed)}); "
                        f"{out / 'report.md'} says why, the others finished")


def checked_inputs(config, stages: list[str]) -> RunInputs:
    """The run's input records, read and checked before torch is imported: a bad file or run_dir
    is reported in about a second, not after the model stack has loaded."""
    check_run_dir(config.run_dir)
    inputs = RunInputs(config)
    inputs.check(inputs_read_by(stages, get_selector(config.select.method)))
    return inputs


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with config overrides accepted anywhere (also after a command's own flags)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(config_overrides(argv))
    if extra and (not hasattr(args, "overrides") or not all("=" in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    _setup_logging(args.quiet)
    if args.command == "config" and args.config and "=" in args.config and not Path(args.config).exists():
        args.config, args.overrides = None, [args.config, *args.overrides]  # `rose config KEY=VALUE`: no file
    try:
        if args.command == "demo":
            _run_demo(args)
            return 0
        if args.command == "config":
            if args.keys:
                print(describe())
            else:
                import yaml

                print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False))
            return 0
        if args.command == "compare":
            config = load_config(args.config, args.overrides)
            if not args.report_only:
                checked_inputs(config, list(STAGES))
                for shots in config.compare.shots:  # each sweep's set too: a bad one is an error now, not after the GPU work
                    RunInputs(config.with_shots(shots)).check(["validation"])
            _run_compare(config, args.shared_only, args.report_only)
            return 0
        config = load_config(args.config, args.overrides)
        names = None if args.command == "run" else [args.command]
        inputs = checked_inputs(config, names or stages_for(get_selector(config.select.method)))
        from .pipeline import cache_dir, run_stages  # torch and the model stack load only once the inputs are known good
        from .report import summary_rows, table

        run = run_stages(config, names, inputs=inputs, cache=cache_dir(config))
        if args.command == "run" and run.dist.is_main:
            from .store import read_json

            print(table(summary_rows(read_json(run.dir / "summary.json"))))
            print(f"selection: {run.dir / STAGES['select'].folder / 'selected.jsonl'}")
            print(f"report: {run.dir / 'report.md'}")
        return 0
    except RoseError as e:
        print(f"rose: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rose: interrupted; finished shards and stages are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`rose ... | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 141
    finally:
        if "rose.distributed" in sys.modules:  # only a command that got as far as torch joined a process group
            sys.modules["rose.distributed"].leave_process_group()
