"""Executor tests: the toy study travels to workers by value (workers cannot import the tests folder)."""

import cloudpickle
import executor_toy

cloudpickle.register_pickle_by_value(executor_toy)
