"""charbench: what a GPU workload really costs in time, power and energy.

Run ``charbench --help`` for the commands; see README.md for worked examples.
"""

__version__ = "0.1.0"

from charbench.syspath import drop_checkout_root as _drop_checkout_root

# ``python -m charbench`` from the repo root must not let ``kernels/`` shadow PyPI ``kernels``.
_drop_checkout_root()
