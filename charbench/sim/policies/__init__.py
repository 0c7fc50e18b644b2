"""Cluster policies: ``static``, ``dynamollm``, ``polca``, ``greener``, and user plug-ins.

See :mod:`charbench.sim.policies.base` for the interface.
"""

from charbench.sim.policies.base import Policy, PolicyConfig
from charbench.sim.policies.registry import POLICIES, load_policy_file, policy_class, register_policy
from charbench.sim.policies import static, dynamollm, polca, greener  # noqa: F401,E402  (register the built-ins)

__all__ = ["POLICIES", "Policy", "PolicyConfig", "load_policy_file", "policy_class", "register_policy"]
