"""A selection method written the way a user adds one: this file and one `register_selector` line.

It scores each pool example by the length of its response in tokens, so the selection is the
longest responses: easy to check, and the pipeline has no idea it exists until it is registered.
"""

from __future__ import annotations

import numpy as np

from rose.selectors import Scores, Selector, register_selector


def longest_responses(run) -> Scores:
    lengths = np.array([len(e) - e.n_prompt for e in run.pool.encoded], dtype=np.float64)
    return Scores(lengths, lengths[:, None], ["all"])


register_selector(Selector("longest", "The pool examples with the longest responses.", longest_responses))
