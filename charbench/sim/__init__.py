"""The profile-driven LLM cluster simulator (spine side: imports no study).

::

    from charbench.sim import simulate
    from charbench.sim.profiles import analytic_profile
    from charbench.sim.policies import PolicyConfig, policy_class

    prof = analytic_profile("h100", "llama-2-70b")
    policy = policy_class("dynamollm")(prof, PolicyConfig(tp=8, instances=4))
    result = simulate(prof, workload, policy, SimSettings())

Modules: :mod:`.hardware` (public GPU/model specs), :mod:`.profiles` (analytic and measured
profiles, interpolation), :mod:`.engine` (discrete-event engine), :mod:`.timeline` (fixed
bins), :mod:`.planner` (steady-state model for controllers), :mod:`.policies`,
:mod:`.workload` (load scaling), :mod:`.metrics`.
"""

from __future__ import annotations

from typing import Any

from charbench.sim.engine import SimResult, SimSettings, Simulator, Workload
from charbench.sim.profiles import Profile
from charbench.sim.workload import scale_load


def simulate(profile: Profile, workload: Workload, policy: Any, settings: SimSettings) -> SimResult:
    """Run ``policy`` on ``workload`` (scaled by the policy's ``load_factor``) to completion."""
    wl = scale_load(workload, policy.load_factor, policy.cfg.seed) if policy.load_factor != 1 else workload
    return Simulator(profile, wl, policy, settings).run()


__all__ = ["SimResult", "SimSettings", "Simulator", "Workload", "simulate"]
