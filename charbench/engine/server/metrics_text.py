"""The ``/metrics`` body: engine and server counters in Prometheus text exposition 0.0.4."""

from __future__ import annotations

from charbench.engine.server.state import ServerState

#: the Content-Type of :func:`metrics_text`'s output
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_text(state: ServerState) -> str:
    """Prometheus text exposition of engine and server counters.

    Every sample carries the ``model_name`` label (escaped); rejections carry a
    ``reason`` label (``queue_full``, ``unavailable``, ``invalid``).

    Args:
        state: the server state (its engine's ``stats()`` and the server counters).

    Returns:
        The exposition text, one ``# HELP``/``# TYPE`` block per metric.
    """
    s = state.engine.stats()
    label = '{model_name="' + state.model_name.replace("\\", "\\\\").replace('"', '\\"') + '"}'
    rows: list[tuple[str, str, str, float]] = [
        ("charbench_num_requests_waiting", "gauge", "Requests waiting to be scheduled.", s.num_waiting),
        ("charbench_num_requests_running", "gauge", "Requests in the running batch.", s.num_running),
        ("charbench_kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use (0-1).", s.kv_cache_usage),
        ("charbench_kv_cache_blocks_used", "gauge", "KV-cache blocks in use.", s.kv_blocks_used),
        ("charbench_kv_cache_blocks_total", "gauge", "KV-cache blocks in the pool.", s.kv_blocks_total),
        ("charbench_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens_total),
        ("charbench_generation_tokens_total", "counter", "Output tokens generated.", s.generation_tokens_total),
        ("charbench_num_preemptions_total", "counter", "Sequences preempted.", s.preemptions_total),
        ("charbench_requests_finished_total", "counter", "Requests finished (any reason).", s.requests_finished_total),
        ("charbench_server_requests_in_flight", "gauge", "HTTP generations in flight.", state.in_flight),
        ("charbench_server_requests_total", "counter", "Generation requests received.", state.counters.requests_total),
        ("charbench_server_client_aborts_total", "counter", "Requests aborted because the client disconnected.",
         state.counters.client_aborts_total),
    ]
    out: list[str] = []
    for name, kind, help_, value in rows:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n{name}{label} {float(value)!r}\n")
    name = "charbench_server_requests_rejected_total"
    out.append(f"# HELP {name} Requests refused (queue full, engine unavailable or dead, invalid request).\n# TYPE {name} counter\n")
    c = state.counters
    for reason, value in (
        ("queue_full", c.rejected_queue_full_total),
        ("unavailable", c.rejected_unavailable_total),
        ("invalid", c.rejected_invalid_total),
    ):
        out.append(f'{name}{label[:-1]},reason="{reason}"}} {float(value)!r}\n')
    return "".join(out)
