"""LongBench scorers (THUDM/LongBench ``metrics.py``): token F1, Rouge-L, edit similarity.

Each example scores the max over its reference answers; a dataset scores 100 x the mean.
Rouge-L (the f-score over the longest common token subsequence) and edit similarity
(``fuzz.ratio / 100`` = ``2 * LCS(chars) / (len(a) + len(b))``, the Indel ratio) share one
LCS routine, so no scorer package is needed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation, drop a/an/the, collapse whitespace (LongBench)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_f1(prediction: str, answer: str) -> float:
    """Token-bag F1 of the normalized strings (0 when they share no token)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, answer: str) -> float:
    """Rouge-L f-score (beta 1) over whitespace tokens."""
    pred, ref = prediction.split(), answer.split()
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def code_sim(prediction: str, answer: str) -> float:
    """Edit similarity of the prediction's first code line (no backtick, ``#`` or ``//``)."""
    line = next((ln for ln in prediction.lstrip("\n").split("\n")
                 if "`" not in ln and "#" not in ln and "//" not in ln), "")
    total = len(line) + len(answer)
    return 2 * lcs_length(line, answer) / total if total else 1.0


SCORERS: dict[str, Callable[[str, str], float]] = {"f1": qa_f1, "rouge_l": rouge_l, "edit_sim": code_sim}
"""``--metric`` name -> scorer."""

DATASET_METRIC = {"hotpotqa": "f1", "2wikimqa": "f1", "multifieldqa_en": "f1", "multi_news": "rouge_l",
                  "lcc": "edit_sim", "repobench-p": "edit_sim"}
"""LongBench datasets DroidSpeak uses -> their metric."""


def score(prediction: str, answers: Sequence[str], metric: str) -> float:
    """Max over ``answers`` of the metric (in [0, 1]).

    Raises:
        ValueError: an unknown metric.
    """
    if metric not in SCORERS:
        raise ValueError(f"--metric: unknown metric '{metric}'; valid: {', '.join(SCORERS)}")
    return max((SCORERS[metric](prediction, a) for a in answers), default=0.0)
