"""Executor tests: the toy study (and serve-sweep's fakes) travel to workers by value (workers cannot import the tests folder)."""

import cloudpickle
import executor_toy

cloudpickle.register_pickle_by_value(executor_toy)  # submitit's pickler
cloudpickle.register_pickle_by_value(executor_toy.serving_fakes)
try:
    import ray.cloudpickle  # Ray vendors its own copy of cloudpickle

    ray.cloudpickle.register_pickle_by_value(executor_toy)
    ray.cloudpickle.register_pickle_by_value(executor_toy.serving_fakes)
except ImportError:
    pass
