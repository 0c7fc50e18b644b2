"""SPP micro-batch plan: chunk i+1 follows chunk i out of stage 0; decodes ride along."""

from __future__ import annotations

import pytest

from charbench.engine.spp import PlanItem, PlanSeq, plan_pipeline
from charbench.errors import ConfigError


def test_chunks_enter_stage0_back_to_back_ttft_n_plus_p_minus_1():
    seq = PlanSeq(0, [4, 4, 4, 4], max_new_tokens=3)
    plan = plan_pipeline([seq], stages=2)
    assert [[(i.start, i.num_tokens, i.is_decode, i.need_logits) for i in b] for b in plan] == [
        [(0, 4, False, False)], [(4, 4, False, False)], [(8, 4, False, False)], [(12, 4, False, True)],
        [],  # the first token is known after step 4 = N + P - 2 (0-based): a bubble
        [(16, 1, True, True)], [],
        [(17, 1, True, True)],
    ]
    assert seq.first_token_step == 4 and seq.token_steps == [4, 6, 8]
    assert seq.stage_processed == 16 and seq.done


def test_without_the_stage_counter_chunks_wait_for_the_whole_pipeline():
    plain = PlanSeq(0, [4] * 4, max_new_tokens=1)
    spp = PlanSeq(0, [4] * 4, max_new_tokens=1)
    plan_pipeline([plain], stages=3, early_stage_counter=False)
    plan_pipeline([spp], stages=3)
    assert plain.first_token_step == 4 * 3 - 1  # N x P steps
    assert spp.first_token_step == 4 + 3 - 2  # N + P - 1 steps


def test_decodes_of_other_sequences_ride_in_the_prefill_micro_batches():
    short = PlanSeq(0, [3], max_new_tokens=4)
    long = PlanSeq(1, [8, 8, 8], max_new_tokens=1, arrival_step=2)
    plan = plan_pipeline([short, long], stages=2)
    assert plan[2] == [PlanItem(0, 3, 1, True, True), PlanItem(1, 0, 8, False, False)]
    assert plan[3] == [PlanItem(1, 8, 8, False, False)]  # the short waits for its token
    assert plan[4] == [PlanItem(0, 4, 1, True, True), PlanItem(1, 16, 8, False, True)]
    assert short.token_steps == [1, 3, 5, 7] and long.token_steps == [5]


def test_one_stage_is_the_plain_engine_loop():
    seq = PlanSeq(0, [5, 5], max_new_tokens=2)
    plan = plan_pipeline([seq], stages=1)
    assert plan == [[PlanItem(0, 0, 5, False, False)], [PlanItem(0, 5, 5, False, True)], [PlanItem(0, 10, 1, True, True)]]


def test_plan_errors():
    with pytest.raises(ConfigError, match=r"sequence 3: prefill chunks must be >= 1 tokens, got \[4, 0\]"):
        PlanSeq(3, [4, 0], 1)
    with pytest.raises(ConfigError, match=r"sequence 0: max_new_tokens must be >= 1, got 0"):
        PlanSeq(0, [4], 0)
    with pytest.raises(ConfigError, match=r"--parallel: spp must be >= 1, got 0"):
        plan_pipeline([PlanSeq(0, [1], 1)], 0)
