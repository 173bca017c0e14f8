"""Answer scores for evaluation: exact match, choice accuracy, BLEU and ROUGE-L, in pure Python.

Every score compares a generated answer with a reference on normalised text (``normalize_answer``) and lies in
[0, 1]. BLEU and ROUGE-L split that text into tokens: runs of word characters, and each punctuation mark on
its own (``"left-sided, 3cm"`` -> ``left - sided , 3cm``)::

    >>> per_sample, means = score_answers(["A small nodule."], ["a small  nodule"])
    >>> means["exact_match"], means["rouge_l"]
    (1.0, 1.0)
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "normalize_answer",
    "exact_match",
    "choice_accuracy",
    "bleu",
    "sentence_bleu",
    "rouge_l",
    "score_answers",
    "ScoreKind",
]

ScoreKind = Literal["auto", "caption", "choice"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
# A bare option letter, as a reference or as the first word of an answer: "B", "B)", "(b)", "B.", "B:".
_LETTER = re.compile(r"^\(?([a-z])[).:]?$")
LABEL_MAX_WORDS = 3  # "auto" scores accuracy when every reference is a label this short


def _is_punctuation(char: str) -> bool:
    # string.punctuation covers ASCII symbols such as "$" or "|"; category P* covers "。", "»", "…" and the like.
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """The form answers are compared in: lowercase, whitespace collapsed, surrounding punctuation removed.

    Steps, in order: lowercase; every run of whitespace (spaces, tabs, newlines) becomes one space; then
    whitespace and punctuation (ASCII ``string.punctuation`` and Unicode punctuation) are stripped from both
    ends, repeatedly, so ``' "Yes." '`` becomes ``yes``. Punctuation inside the text stays
    (``"3.5 cm, left"`` keeps its ``.`` and ``,``); articles are not removed.

    Args:
        text: an answer or a reference.

    Returns:
        The normalised text (possibly empty).

    Example:
        >>> normalize_answer("  The  Left\\nLung. ")
        'the left lung'
    """
    text = " ".join(text.lower().split())
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or _is_punctuation(text[start])):
        start += 1
    while end > start and (text[end - 1].isspace() or _is_punctuation(text[end - 1])):
        end -= 1
    return text[start:end]


def _tokens(text: str) -> list[str]:
    """Normalised text -> word and punctuation tokens (the unit of BLEU and ROUGE-L)."""
    return _TOKEN.findall(normalize_answer(text))


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0.

    Args:
        prediction: the generated answer.
        reference: the expected answer.

    Returns:
        1.0 or 0.0.

    Example:
        >>> exact_match("Pneumonia.", "pneumonia")
        1.0
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _letter(text: str) -> str | None:
    """The option letter ``text`` (already normalised, one word) spells, if it is one: ``"(b)"`` -> ``"b"``."""
    match = _LETTER.match(text)
    return match.group(1) if match else None


def _choice_index(text: str, choices: Sequence[str]) -> int | None:
    """Which of ``choices`` a (normalised) answer picks: its leading letter, else the longest choice it starts with."""
    words = text.split(" ", 1)
    letter = _letter(words[0]) if words[0] else None
    if letter is not None and ord(letter) - ord("a") < len(choices):
        return ord(letter) - ord("a")
    best: int | None = None
    for i, choice in enumerate(normalize_answer(c) for c in choices):
        # Whole words only: choice "no" must not match the answer "normal".
        if choice and (text == choice or text.startswith(choice + " ") or
                       (text.startswith(choice) and _is_punctuation(text[len(choice)]))):
            if best is None or len(choice) > len(normalize_answer(choices[best])):
                best = i
    return best


def choice_accuracy(prediction: str, reference: str, choices: Sequence[str] | None = None) -> float:
    """Accuracy for classification and multiple choice: 1.0 when the prediction picks the reference's answer.

    The rule, on normalised text (``normalize_answer``), first match wins:

    1. the prediction equals the reference -> 1.0 (a class label such as ``"pneumonia"``);
    2. with ``choices`` (option texts, lettered A, B, C, ... in order): the reference's option is its letter
       (``"B"``, ``"(b)"``, ``"B)"``, ``"B."``) or the option whose text it equals; the prediction's option is
       the letter its first word spells (``"B) a cat"`` -> B) if that letter is in range, else the option whose
       text it starts with, on a word boundary, the longest one when several do. 1.0 when both exist and
       are the same option;
    3. without ``choices``, when the reference is a bare letter (``"A"``, ``"B)"``, ``"(c)"``): 1.0 when the
       prediction's first word spells the same letter (``"A. Left"``, ``"a"``; note that a prediction beginning
       with the article "A" counts as option A here).

    Everything else is 0.0: a prediction that adds words to a class label (``"pneumonia, likely"``) is wrong.

    Args:
        prediction: the generated answer.
        reference: the expected label, option letter or option text.
        choices: the options' texts in letter order, when known.

    Returns:
        1.0 or 0.0.

    Example:
        >>> choice_accuracy("B) Effusion", "b"), choice_accuracy("effusion", "B", ["Nodule", "Effusion"])
        (1.0, 1.0)
    """
    predicted, expected = normalize_answer(prediction), normalize_answer(reference)
    if predicted == expected:
        return 1.0
    if choices:
        wanted = _choice_index(expected, choices)
        got = _choice_index(predicted, choices)
        return float(wanted is not None and got == wanted)
    letter = _letter(expected)
    if letter is None or not predicted:
        return 0.0
    return float(_letter(predicted.split(" ", 1)[0]) == letter)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4, smooth: bool = True) -> float:
    """Corpus BLEU (Papineni et al. 2002) with one reference per prediction, in [0, 1].

    Clipped n-gram matches and candidate n-gram counts are summed over the corpus for n = 1..``max_order``;
    the score is the geometric mean of the precisions times the brevity penalty ``exp(1 - r / c)`` when the
    predictions' total length c is below the references' r (0 when c is 0). With ``smooth``, the precisions
    of orders n >= 2 are ``(matches + 1) / (candidates + 1)`` (Lin & Och 2004, "BLEU+1"), so a short or
    partly right answer is not zeroed by a missing 4-gram; unigram precision is never smoothed, so an answer
    sharing no word with its reference scores 0. Without ``smooth`` any order with no match gives 0.

    Args:
        predictions: generated answers.
        references: one reference per prediction.
        max_order: the longest n-gram.
        smooth: add-one smoothing of the n >= 2 precisions.

    Returns:
        BLEU in [0, 1]; 0.0 for an empty corpus.

    Raises:
        ValueError: the two lists differ in length, or ``max_order`` < 1.

    Example:
        >>> round(bleu(["the cat sat on the mat"], ["the cat is on the mat"]), 4)
        0.4855
    """
    if len(predictions) != len(references):
        raise ValueError(f"bleu needs one reference per prediction: got {len(predictions)} predictions and "
                         f"{len(references)} references.")
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}.")
    matches = [0] * max_order
    candidates = [0] * max_order
    prediction_length = reference_length = 0
    for prediction, reference in zip(predictions, references, strict=True):
        predicted, expected = _tokens(prediction), _tokens(reference)
        prediction_length += len(predicted)
        reference_length += len(expected)
        for n in range(1, max_order + 1):
            counts = _ngrams(predicted, n)
            matches[n - 1] += sum((counts & _ngrams(expected, n)).values())  # & clips to the reference counts
            candidates[n - 1] += max(len(predicted) - n + 1, 0)
    if prediction_length == 0:
        return 0.0
    log_precision = 0.0
    for n in range(max_order):
        if smooth and n > 0:
            precision = (matches[n] + 1) / (candidates[n] + 1)
        else:
            precision = matches[n] / candidates[n] if candidates[n] else 0.0
        if precision == 0.0:
            return 0.0
        log_precision += math.log(precision) / max_order
    brevity = 1.0 if prediction_length >= reference_length else math.exp(1 - reference_length / prediction_length)
    return brevity * math.exp(log_precision)


def sentence_bleu(prediction: str, reference: str, max_order: int = 4, smooth: bool = True) -> float:
    """BLEU of one answer against its reference (``bleu`` on a one-sentence corpus): a per-sample score.

    Args:
        prediction: the generated answer.
        reference: the expected answer.
        max_order, smooth: as in ``bleu``.

    Returns:
        BLEU in [0, 1].
    """
    return bleu([prediction], [reference], max_order=max_order, smooth=smooth)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, one row of the dynamic programme at a time (O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004) with beta = 1: the harmonic mean of LCS precision and recall.

    With L the longest common subsequence of the token lists (not necessarily contiguous), precision is
    L / len(prediction), recall L / len(reference) and the score 2PR / (P + R). An empty prediction or
    reference (after normalisation) scores 0.

    Args:
        prediction: the generated answer.
        reference: the expected answer.

    Returns:
        ROUGE-L F1 in [0, 1].

    Example:
        >>> rouge_l("police kill the gunman", "police killed the gunman")  # LCS "police the gunman"
        0.75
    """
    predicted, expected = _tokens(prediction), _tokens(reference)
    common = _lcs_length(predicted, expected) if predicted and expected else 0
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def score_answers(
    predictions: Sequence[str],
    references: Sequence[str | None],
    *,
    kind: ScoreKind = "auto",
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Score each answer against its reference, and average.

    Scores per kind:

    * ``"caption"``: ``exact_match``, ``bleu`` (``sentence_bleu``) and ``rouge_l``;
    * ``"choice"``: ``exact_match`` and ``accuracy`` (``choice_accuracy`` without options);
    * ``"auto"``: the caption scores, plus ``accuracy`` when every reference is a short label of at most
      3 whitespace-separated words (``"pneumonia"``, ``"B"``, ``"no finding"``): then the task is
      classification-like and accuracy is the number to read.

    A sample whose reference is None (its prompt had no answer) is not scored: its dict is empty and it does
    not count in the means.

    Args:
        predictions: generated answers.
        references: the expected answers, None where there is none.
        kind: which scores, as above.

    Returns:
        ``(per_sample, means)``: one dict per prediction, and the mean of each score over the scored samples
        (empty when none was scored). When BLEU is scored, the means also hold ``corpus_bleu``: ``bleu`` over
        the scored samples as one corpus, the figure papers report (the mean of sentence BLEU is lower on
        short answers).

    Raises:
        ValueError: the lists differ in length, or ``kind`` is unknown.

    Example:
        >>> per_sample, means = score_answers(["B) Effusion", "A", "x"], ["B", "C", None], kind="choice")
        >>> per_sample
        [{'exact_match': 0.0, 'accuracy': 1.0}, {'exact_match': 0.0, 'accuracy': 0.0}, {}]
        >>> means
        {'exact_match': 0.0, 'accuracy': 0.5}
    """
    if kind not in ("auto", "caption", "choice"):
        raise ValueError(f"kind must be 'auto', 'caption' or 'choice', got {kind!r}.")
    if len(predictions) != len(references):
        raise ValueError(f"score_answers needs one reference per prediction: got {len(predictions)} predictions "
                         f"and {len(references)} references (use None for a sample without one).")
    scored = [i for i, reference in enumerate(references) if reference is not None]
    labels = bool(scored) and all(len(references[i].split()) <= LABEL_MAX_WORDS for i in scored)
    with_text = kind in ("auto", "caption")
    with_accuracy = kind == "choice" or (kind == "auto" and labels)
    per_sample: list[dict[str, float]] = [{} for _ in predictions]
    for i in scored:
        prediction, reference = predictions[i], references[i]
        scores = {"exact_match": exact_match(prediction, reference)}
        if with_accuracy:
            scores["accuracy"] = choice_accuracy(prediction, reference)
        if with_text:
            scores["bleu"] = sentence_bleu(prediction, reference)
            scores["rouge_l"] = rouge_l(prediction, reference)
        per_sample[i] = scores
    means: dict[str, float] = {}
    if scored:
        for key in per_sample[scored[0]]:
            means[key] = sum(per_sample[i][key] for i in scored) / len(scored)
        if with_text:
            means["corpus_bleu"] = bleu([predictions[i] for i in scored], [references[i] for i in scored])
    return per_sample, means
