"""``static``: DynamoLLM's baseline. Fixed instances of one tp at the maximum clock, one pool."""

from __future__ import annotations

from charbench.sim.policies.base import Policy
from charbench.sim.policies.registry import register_policy


@register_policy
class StaticPolicy(Policy):
    """Fixed instances, maximum frequency, one pool (the base class's behaviour)."""

    name = "static"
