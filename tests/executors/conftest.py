"""Executor tests: the toy study travels to workers by value (workers cannot import the tests folder)."""

import cloudpickle
import executor_toy

cloudpickle.register_pickle_by_value(executor_toy)  # submitit's pickler
try:
    import ray.cloudpickle  # Ray vendors its own copy of cloudpickle

    ray.cloudpickle.register_pickle_by_value(executor_toy)
except ImportError:
    pass
