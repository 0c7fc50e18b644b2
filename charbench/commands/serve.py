"""``charbench serve``: run the built-in engine behind an OpenAI-compatible HTTP server.

Example::

    charbench serve --model tiny --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
        -d '{"prompt": "Hello", "max_tokens": 8, "temperature": 0}'

Also runnable without the root CLI: ``python -m charbench.commands.serve --model tiny``.
The endpoints are documented in :mod:`charbench.engine.server`.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from charbench.config import Range, check_value
from charbench.device import check_fits_memory
from charbench.engine.api import EngineConfig
from charbench.engine.http_limits import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_BODY_MB,
    body_limit_bytes,
    check_header_timeout,
)
from charbench.errors import CharbenchError, ConfigError

app = typer.Typer(add_completion=False)

_DTYPES = ("fp32", "bf16", "fp16")
_BACKENDS = ("torch", "triton")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _resolve_device(device: str) -> str:
    """``--device`` through :func:`charbench.device.resolve_device`; ``auto`` means cuda when visible."""
    from charbench.device import resolve_device

    return resolve_device(device)


def build_config(
    model: str,
    dtype: str,
    device: str,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    kv_cache_gb: float | None,
    tp: int,
    attention_backend: str,
    max_queue: int,
    max_model_len: int | None,
    seed: int,
) -> EngineConfig:
    """Validate the serve options and build the engine configuration.

    Raises:
        ConfigError: naming the option at fault and the fix.
    """
    if not model:
        raise ConfigError("--model: give a preset name (tiny, small, ...) or a checkpoint folder")
    if dtype not in _DTYPES:
        raise ConfigError(f"--dtype: unknown dtype '{dtype}'; valid: {', '.join(_DTYPES)}")
    if attention_backend not in _BACKENDS:
        raise ConfigError(f"--attention-backend: unknown backend '{attention_backend}'; valid: {', '.join(_BACKENDS)}")
    for flag, value in (
        ("--max-num-seqs", max_num_seqs),
        ("--max-num-batched-tokens", max_num_batched_tokens),
        ("--tp", tp),
        ("--max-queue", max_queue),
    ):
        if value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    check_value(kv_cache_gb, Range(gt=0), "--kv-cache-gb")
    if max_model_len is not None and max_model_len < 2:
        raise ConfigError(f"--max-model-len: must be >= 2, got {max_model_len}; omit it for the model's length")
    resolved = _resolve_device(device)
    if kv_cache_gb is not None:  # before the engine allocates it
        check_fits_memory(kv_cache_gb, resolved, "--kv-cache-gb")
    return EngineConfig(
        model=model,
        dtype=dtype,
        device=resolved,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        kv_cache_gb=kv_cache_gb,
        tp=tp,
        attention_backend=attention_backend,
        max_model_len=max_model_len,
        seed=seed,
        max_queue=max_queue,
    )


@app.command()
def serve(
    model: str = typer.Option("tiny", "--model", help="Preset name (tiny, small, llama-2-7b, ...) or a local HF checkpoint folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind. Loopback by default; other hosts print a warning."),
    port: int = typer.Option(8000, "--port", help="TCP port, 0-65535 (0 picks a free port)."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weights/activations dtype: fp32, bf16 or fp16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: cuda when visible)."),
    max_num_seqs: int = typer.Option(64, "--max-num-seqs", help="Most sequences per iteration."),
    max_num_batched_tokens: int = typer.Option(512, "--max-num-batched-tokens", help="Per-iteration token budget."),
    kv_cache_gb: Optional[float] = typer.Option(None, "--kv-cache-gb", help="KV-cache size in GiB (default: engine's choice)."),  # noqa: UP007 - typer needs Optional
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree."),
    attention_backend: str = typer.Option("torch", "--attention-backend", help="torch or triton."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Answer 429 when this many requests are waiting."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Longest prompt+output (default: model's context)."),  # noqa: UP007
    seed: int = typer.Option(0, "--seed", help="Seed for preset weights and the default sampler."),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info, debug (access log), trace."),
    max_body_mb: float = typer.Option(
        DEFAULT_MAX_BODY_MB, "--max-body-mb",
        help=f"Answer 413 to request bodies over this many MiB, counted as they arrive (default {DEFAULT_MAX_BODY_MB:g}: "
        "a 1M-token prompt as token ids is about 8 MiB).",
    ),
    header_timeout_s: float = typer.Option(
        DEFAULT_HEADER_TIMEOUT_S, "--header-timeout-s",
        help=f"Answer 408 and close a connection whose request line and headers take longer (default {DEFAULT_HEADER_TIMEOUT_S:g} s).",
    ),
) -> None:
    """Serve a model with an OpenAI-compatible API (/v1/completions, /v1/chat/completions)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be in 0-65535, got {port}")
    if not host:
        raise ConfigError("--host: empty; use 127.0.0.1 (default) or an interface address")
    level = log_level.lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"--log-level: unknown level '{log_level}'; valid: {', '.join(_LOG_LEVELS)}")
    body_limit_bytes(max_body_mb)  # checked before the model loads
    check_header_timeout(header_timeout_s)
    cfg = build_config(
        model, dtype, device, max_num_seqs, max_num_batched_tokens, kv_cache_gb, tp,
        attention_backend, max_queue, max_model_len, seed,
    )
    from charbench.engine.server import LOOPBACK_HOSTS, run_server

    if host not in LOOPBACK_HOSTS:
        typer.echo(
            f"Warning: binding to {host}: the server has no authentication and is reachable "
            "from other machines.",
            err=True,
        )
    run_server(
        cfg, host=host, port=port, log_level=level, warn_exposed=False,
        max_body_mb=max_body_mb, header_timeout_s=header_timeout_s,
    )


def main() -> None:
    """Entry point for ``python -m charbench.commands.serve``: prints user errors plainly."""
    try:
        app(standalone_mode=False)
    except CharbenchError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None) if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
