"""Per-parameter work (an optimizer step) shared among the pool's threads, a run of parameters each.

An optimizer updates each parameter on its own: no update reads another's
arrays. With :func:`nptransformer.set_num_threads` above 1 the parameters
are cut into contiguous runs holding about equal numbers of elements
(:func:`nptransformer.parallel.balanced`), one run per thread; each update
is the same computation on the same arrays as in the serial loop, so the
results are bit-identical to it.

>>> import numpy as np
>>> seen = []
>>> for_each_parameter(seen.append, ["w", "b"], [np.zeros((4, 3)), np.zeros(3)])
>>> seen
['w', 'b']
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .. import parallel


def for_each_parameter(update: Callable[[Any], Any], items: Sequence[Any], arrays: Sequence[Any],
                       min_elements: int = parallel.MIN_ELEMENTS) -> None:
    """``update(items[i])`` for every i, runs of items of about equal total size computed at once.

    ``arrays[i]``: the array item i updates (a parameter's ``data``); its
    size weighs the split. The runs go to the pool only when the arrays are
    NumPy's (a GPU runs one kernel per operator, and ``array_api_strict``
    has no reason to split); otherwise, and below ``min_elements`` in all,
    the loop is serial.
    """
    on_numpy = bool(arrays) and all(isinstance(a, np.ndarray) for a in arrays)
    runs = parallel.balanced([a.size for a in arrays], min_elements) if on_numpy else [(0, len(items))]
    parallel.run(lambda lo, hi: [update(item) for item in items[lo:hi]], runs)
