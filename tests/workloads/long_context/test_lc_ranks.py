"""The rank pool: one set of ranks serves many generations; a failed one restarts the pool for the next."""

from __future__ import annotations

import pytest
from charbench.engine.lc_runner import GenerateSpec
from charbench.engine.parallel import Layout
from charbench.errors import DeviceError
from charbench.workloads.long_context.ranks import RankPool


@pytest.mark.slow
def test_pool_serves_several_points_and_restarts_after_a_failure() -> None:
    pool = RankPool(Layout.parse("kvp=2"))
    try:
        first = pool.run(GenerateSpec("nano-long", list(range(40)), [20, 20], 3, 22))
        procs = list(pool._procs)
        again = pool.run(GenerateSpec("nano-long", list(range(40)), [40], 3, 22))
        assert pool._procs == procs  # the same processes ran both
        assert first.tokens == again.tokens  # chunking does not change greedy output
        with pytest.raises(DeviceError) as e:
            pool.run(GenerateSpec("nano-long", list(range(40)), [10], 3, 22))  # chunks do not cover the prompt
        assert str(e.value).startswith("--parallel 1x1x2: rank ") and "chunks sum to 10 but the prompt has 40 tokens" in str(e.value)
        assert pool._procs == []
        after = pool.run(GenerateSpec("nano-long", list(range(40)), [20, 20], 3, 22))  # restarted
        assert after.tokens == first.tokens and len(pool._procs) == 2
    finally:
        pool.close()
    assert pool._procs == []
