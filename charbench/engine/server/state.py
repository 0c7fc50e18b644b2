"""What the server's endpoints share: the engine, limits, kept request records and counters."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from charbench.engine.api import RequestRecord

if TYPE_CHECKING:
    from charbench.engine.server.generation import Generation


@dataclasses.dataclass
class ServerCounters:
    """Server-side counters exported on /metrics."""

    rejected_queue_full_total: int = 0
    rejected_unavailable_total: int = 0
    rejected_invalid_total: int = 0
    client_aborts_total: int = 0
    requests_total: int = 0


class ServerState:
    """Everything the endpoints share: the engine, limits, records and counters.

    Args:
        engine: the served engine (an ``AsyncLLMEngine`` or anything with its interface).
        max_queue: refuse new requests when this many wait.
        served_names: model names requests may ask for; the first is reported.
        records_capacity: how many finished requests' records are kept.
    """

    def __init__(
        self, engine: Any, max_queue: int, served_names: list[str], records_capacity: int
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.served_names = served_names
        self.model_name = served_names[0]
        self.records: OrderedDict[str, tuple[RequestRecord, float, bool]] = OrderedDict()
        self.records_capacity = records_capacity
        self.counters = ServerCounters()
        self.starting = 0  # generations created whose task has not registered with the engine yet
        self.in_flight = 0
        self.shutting_down = False

    # ---- engine facts (read lazily: the engine may finish loading after build_app)
    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer."""
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        """The engine's context length in tokens (prompt plus output)."""
        return int(self.engine.max_model_len)

    def engine_unavailable_reason(self) -> str | None:
        """Why the engine cannot take requests now, or None when it can."""
        if self.shutting_down:
            return "the server is shutting down"
        eng = self.engine
        for attr in ("errored", "is_dead", "dead"):
            if getattr(eng, attr, False) is True:
                err = getattr(eng, "dead_error", None) or getattr(eng, "error", None)
                return "the engine has stopped" + (f": {err}" if err else "")
        running = getattr(eng, "is_running", None)
        if running is False:
            return "the engine is not running"
        return None

    def remember(self, gen: Generation) -> None:
        """Keep a finished or aborted request's record for /v1/charbench/records.

        The record object is kept as is (converted to JSON only when asked for), so the
        hot path costs one dict insert.
        """
        if gen.last is None:
            return
        self.records[gen.request_id] = (gen.last.record, gen.server_arrival_time_s, gen.aborted_by_client)
        if len(self.records) > self.records_capacity:
            self.records.popitem(last=False)

    def record_json(self, request_id: str) -> dict[str, Any]:
        """One kept record as a JSON-ready dict (fields + derived latencies)."""
        rec, arrival, aborted = self.records[request_id]
        data = dataclasses.asdict(rec)
        data["request_id"] = request_id
        data["engine_request_id"] = rec.request_id
        data["ttft_ms"] = rec.ttft_ms
        data["e2el_ms"] = rec.e2el_ms
        data["tpot_ms"] = rec.tpot_ms
        data["itl_ms"] = rec.itl_ms
        data["server_arrival_time_s"] = arrival
        data["aborted_by_client"] = aborted
        return data
