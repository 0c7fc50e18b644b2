"""What an engine serves, in words: its weights (random or a checkpoint) and its chat
template (the checkpoint's or charbench's fallback), plus the warnings they call for.

The server's start-up log and ``/v1/models``, and serve-sweep's records and report, all
label an engine from :func:`engine_labels`, so they say the same thing::

    engine_labels(engine)
    # {"weights": "random", "chat_template": "fallback",
    #  "warnings": ["random weights: completions are meaningless text ..."]}

Light on purpose (no torch): the facts are read from the engine's attributes.
"""

from __future__ import annotations

from typing import Any

RANDOM = "random"
CHECKPOINT = "checkpoint"
FALLBACK = "fallback"
RANDOM_WEIGHTS_WARNING = (
    "random weights: completions are meaningless text (seeded random numbers, not a trained "
    "model; fine for timing and energy); pass --model a checkpoint folder for real text"
)


def weights_kind(engine: Any) -> str | None:
    """``"random"`` or ``"checkpoint"``: the ``weights_kind`` of the engine's model runner.

    Looks on the engine, the synchronous engine an ``AsyncLLMEngine`` wraps (``.engine``)
    and their ``.runner``; None when none says (a stand-in engine).
    """
    inner = getattr(engine, "engine", None)
    for obj in (engine, getattr(engine, "runner", None), inner, getattr(inner, "runner", None)):
        kind = getattr(obj, "weights_kind", None)
        if kind in (RANDOM, CHECKPOINT):
            return kind
    return None


def chat_template_kind(tokenizer: Any) -> str:
    """``"checkpoint"`` when the tokenizer carries the checkpoint's template, else ``"fallback"``."""
    return CHECKPOINT if getattr(tokenizer, "chat_template", None) else FALLBACK


def fallback_template_warning(tokenizer: Any) -> str:
    """The warning for a checkpoint served with charbench's fallback chat template."""
    origin = getattr(tokenizer, "chat_template_origin", None) or "no chat template found"
    return (
        f"chat template: the checkpoint has none ({origin}); /v1/chat/completions uses "
        "charbench's fallback template, which this model was not trained on (add "
        "chat_template.jinja to the checkpoint folder)"
    )


def engine_labels(engine: Any) -> dict[str, Any]:
    """``weights``, ``chat_template`` and ``warnings`` (a list of sentences) of ``engine``.

    A preset's fallback chat template is not warned about: with random weights there is
    no trained format to match, and the random-weights warning already says so.
    """
    weights = weights_kind(engine)
    tokenizer = getattr(engine, "tokenizer", None)
    template = chat_template_kind(tokenizer)
    warnings: list[str] = []
    if weights == RANDOM:
        warnings.append(RANDOM_WEIGHTS_WARNING)
    elif template == FALLBACK:
        warnings.append(fallback_template_warning(tokenizer))
    return {"weights": weights, "chat_template": template, "warnings": warnings}


__all__ = [
    "CHECKPOINT", "FALLBACK", "RANDOM", "RANDOM_WEIGHTS_WARNING",
    "chat_template_kind", "engine_labels", "fallback_template_warning", "weights_kind",
]
