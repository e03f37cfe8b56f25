"""rose: preference-guided training data selection (ROSE, Wu et al. 2025) for causal LMs.

`rose.select(pool, target)` returns a `Selection` (see `rose.api`); `rose.load_config` and
`rose.run_stages` give the pipeline stage by stage. They are imported on first use, so that
`import rose` loads no torch: the CLI checks a config and its inputs before the model stack loads.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "select": "rose.api", "selection_config": "rose.api", "selection_stages": "rose.api", "read_selection": "rose.api",
    "Selection": "rose.api", "SelectionFiles": "rose.api",
    "load_config": "rose.config", "RunConfig": "rose.config", "run_stages": "rose.pipeline", "STAGES": "rose.stages",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rose' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
