"""The synthetic long-context task family the default model pairs are trained on.

A context is ``pairs`` facts, one token each: ``k7:v9 k3:v2 ...`` (keys distinct, values
drawn with replacement; a fact token's embedding starts as the sum of its key's and its
value's, see :mod:`.train`). A query is a task marker and one word; the answer is one word.
The tasks read different parts of the facts, so they need different context encodings
from the same base:

* ``get``  (the base, the sender): ``get k3`` -> the value of ``k3``'s fact.
* ``key``  (the all-blocks fine-tune): ``key v2`` -> the key of the first fact whose value is
  ``v2`` (matched on the value, the key copied: the sender's K/V carry the opposite roles, so
  full KV reuse misleads the receiver - DroidSpeak's hard case).
* ``next`` (the middle-layers fine-tune): ``next k3`` -> the value after ``k3``'s value
  (``v9`` -> ``v10``, ``v15`` wraps to ``v0``): the base's lookup with the answer shifted,
  which two middle layers learn in a few hundred steps - DroidSpeak's favourable case, one
  block of layers. (This task's earlier form, the value of the fact *after* ``k3``'s, was
  not learnt in 2000 steps even with every block trainable: 25%.)

Examples are seeded and reproducible; :func:`examples` returns LongBench-style records
(``context``, ``input``, ``answers``) so the study scores them like ``--data FILE``::

    examples("key", 200, 6, seed=100)[0].to_record("key")
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NUM_KEYS = 16
NUM_VALUES = 16
SPECIALS = ("<s>", "</s>", "get", "next", "key", "?")
TASKS = ("get", "next", "key")


def fact_word(key: int, value: int) -> str:
    """The one-token word of the fact ``key -> value``."""
    return f"k{key}:v{value}"


def vocabulary() -> list[str]:
    """Every word of the task family, in id order (``<s>`` = 0 is BOS, ``</s>`` = 1 EOS):
    specials, keys, values, then the fact words key-major."""
    return (list(SPECIALS) + [f"k{i}" for i in range(NUM_KEYS)] + [f"v{i}" for i in range(NUM_VALUES)]
            + [fact_word(k, v) for k in range(NUM_KEYS) for v in range(NUM_VALUES)])


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


def draw_facts(pairs: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Keys (distinct) and values (with replacement) of one context.

    Raises:
        ValueError: fewer than 2 or more than :data:`NUM_KEYS` facts.
    """
    if pairs < 2 or pairs > NUM_KEYS:
        raise ValueError(f"pairs: must be in [2, {NUM_KEYS}], got {pairs}")
    keys = rng.sample(range(NUM_KEYS), pairs)
    return keys, [rng.randrange(NUM_VALUES) for _ in keys]


def draw_query(task: str, keys: list[int], values: list[int], rng: random.Random) -> tuple[str, str]:
    """One ``(query, answer)`` of ``task`` about the facts ``keys``/``values``.

    Raises:
        ValueError: unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown task '{task}'; valid: {', '.join(TASKS)}")
    n = len(keys)
    if task == "get":
        i = rng.randrange(n)
        return f"get k{keys[i]}", f"v{values[i]}"
    if task == "next":
        i = rng.randrange(n)
        return f"next k{keys[i]}", f"v{(values[i] + 1) % NUM_VALUES}"
    i = rng.randrange(n)
    first = values.index(values[i])  # "the first fact whose value is ...": unambiguous
    return f"key v{values[i]}", f"k{keys[first]}"


def make_example(task: str, pairs: int, rng: random.Random) -> Example:
    """Draw one example of ``task`` with ``pairs`` facts.

    Raises:
        ValueError: unknown task, or fewer than 2 facts.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown task '{task}'; valid: {', '.join(TASKS)}")
    keys, values = draw_facts(pairs, rng)
    query, answer = draw_query(task, keys, values, rng)
    return Example(" ".join(fact_word(k, v) for k, v in zip(keys, values)), query, answer)


def examples(task: str, count: int, pairs: int, seed: int) -> list[Example]:
    """``count`` seeded examples of ``task`` (the same list for the same arguments)."""
    rng = random.Random(f"{task}:{pairs}:{seed}")
    return [make_example(task, pairs, rng) for _ in range(count)]
