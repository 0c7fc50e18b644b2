"""The synthetic long-context task family the default model pairs are trained on.

A context is ``pairs`` key/value facts written as words, ``k7 v19 k3 v2 ...`` (keys are
distinct, values drawn with replacement); a query is a task marker and one word; the
answer is one word. The tasks differ in what they retrieve, so they need different
context encodings from the same base:

* ``get``  (the base, the sender): ``get k3`` -> the value of ``k3``.
* ``next`` (the all-blocks fine-tune): ``next k3`` -> the value of the fact *after* ``k3``'s
  (each context token must carry the fact before it: a different context encoding, so the
  sender's KV misleads the receiver - DroidSpeak's hard case).
* ``key``  (the middle-layers fine-tune): ``key v2`` -> the key of the first fact whose
  value is ``v2`` (the base already stores each value's key at the value token; only the
  lookup changes - DroidSpeak's favourable case).

Examples are seeded and reproducible; :func:`examples` returns LongBench-style records
(``context``, ``input``, ``answers``) so the study scores them like ``--data FILE``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NUM_KEYS = 16
NUM_VALUES = 16
SPECIALS = ("<s>", "</s>", "get", "next", "key", "?")
TASKS = ("get", "next", "key")


def vocabulary() -> list[str]:
    """Every word of the task family, in id order (``<s>`` = 0 is BOS, ``</s>`` = 1 EOS)."""
    return list(SPECIALS) + [f"k{i}" for i in range(NUM_KEYS)] + [f"v{i}" for i in range(NUM_VALUES)]


@dataclass(frozen=True)
class Example:
    """One task instance (words, not ids).

    Attributes:
        context: the facts, space-separated.
        input: the query (task marker and one word).
        answer: the one-word answer.
    """

    context: str
    input: str
    answer: str

    def to_record(self, task: str) -> dict[str, object]:
        """A LongBench-style record (``context``, ``input``, ``answers``, ``dataset``)."""
        return {"context": self.context, "input": self.input, "answers": [self.answer], "dataset": task}


def make_example(task: str, pairs: int, rng: random.Random) -> Example:
    """Draw one example of ``task`` with ``pairs`` facts.

    Raises:
        ValueError: unknown task, or fewer than 2 facts.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown task '{task}'; valid: {', '.join(TASKS)}")
    if pairs < 2 or pairs > NUM_KEYS:
        raise ValueError(f"pairs: must be in [2, {NUM_KEYS}], got {pairs}")
    keys = rng.sample(range(NUM_KEYS), pairs)
    values = [rng.randrange(NUM_VALUES) for _ in keys]
    context = " ".join(f"k{k} v{v}" for k, v in zip(keys, values))
    if task == "get":
        i = rng.randrange(pairs)
        return Example(context, f"get k{keys[i]}", f"v{values[i]}")
    if task == "next":
        i = rng.randrange(pairs - 1)  # the last fact has no next one
        return Example(context, f"next k{keys[i]}", f"v{values[i + 1]}")
    i = rng.randrange(pairs)
    first = values.index(values[i])  # "the first fact whose value is ...": unambiguous
    return Example(context, f"key v{values[i]}", f"k{keys[first]}")


def examples(task: str, count: int, pairs: int, seed: int) -> list[Example]:
    """``count`` seeded examples of ``task`` (the same list for the same arguments)."""
    rng = random.Random(f"{task}:{pairs}:{seed}")
    return [make_example(task, pairs, rng) for _ in range(count)]
