"""charbench: what a GPU workload really costs in time, power and energy.

Run ``charbench --help`` for the commands; see README.md for worked examples.
"""

__version__ = "0.1.0"
