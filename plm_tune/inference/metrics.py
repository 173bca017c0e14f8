"""Answer scores for evaluation: exact match, choice accuracy, ROUGE-L, and BLEU as sacreBLEU computes it.

Every score compares a generated answer with a reference and lies in [0, 1]. Exact match, accuracy and ROUGE-L
work on normalised text (``normalize_answer``); ROUGE-L splits it into tokens: runs of word characters, and
each punctuation mark on its own (``"left-sided, 3cm"`` -> ``left - sided , 3cm``). BLEU is sacreBLEU's
(``corpus_bleu``, ``sentence_bleu``) on the raw text, divided by 100, so that it is the number papers quote,
on the same 0-1 scale as the other scores; ``bleu_signatures`` says its settings::

    >>> per_sample, means = score_answers(["A small nodule."], ["a small  nodule"])
    >>> means["exact_match"], means["rouge_l"]
    (1.0, 1.0)
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Literal

from sacrebleu.metrics.bleu import BLEU, BLEUSignature

__all__ = [
    "normalize_answer",
    "exact_match",
    "choice_accuracy",
    "corpus_bleu",
    "sentence_bleu",
    "bleu_signatures",
    "rouge_l",
    "score_answers",
    "ScoreKind",
]

ScoreKind = Literal["auto", "caption", "choice"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
# A bare option letter, as a reference or as the first word of an answer: "B", "B)", "(b)", "B.", "B:".
_LETTER = re.compile(r"^\(?([a-z])[).:]?$")
LABEL_MAX_WORDS = 3  # "auto" scores accuracy when every reference is a label this short
# sacreBLEU's defaults, as sacrebleu.corpus_bleu / sacrebleu.sentence_bleu build them (sacrebleu/compat.py):
# corpus level without effective order, sentence level with it.
_CORPUS_BLEU = BLEU()
_SENTENCE_BLEU = BLEU(effective_order=True)


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
    """Normalised text -> word and punctuation tokens (the unit of ROUGE-L)."""
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


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU as sacreBLEU computes it (``sacrebleu.corpus_bleu``), on a 0-1 scale: sacreBLEU's score / 100.

    The raw answers and references go to sacreBLEU unchanged (no ``normalize_answer``): its defaults decide,
    the ``13a`` tokenizer (mteval's: punctuation split off, case kept), ``exp`` smoothing, clipped n-gram counts
    summed over the corpus for n = 1..4 and one brevity penalty. ``bleu_signatures()["corpus_bleu"]`` is the
    signature of exactly this setting, to quote next to the number. As in sacreBLEU, a corpus with no 4-gram
    in any answer (every answer under 4 tokens, e.g. class labels) scores 0: read accuracy there.

    Args:
        predictions: generated answers.
        references: one reference per prediction.

    Returns:
        BLEU in [0, 1] (x 100 is the figure sacreBLEU prints); 0.0 for an empty corpus.

    Raises:
        ValueError: the two lists differ in length.

    Example:
        >>> round(corpus_bleu(["The cat sat on the mat."], ["The cat is on the mat."]), 4)
        0.4889
    """
    if len(predictions) != len(references):
        raise ValueError(f"corpus_bleu needs one reference per prediction: got {len(predictions)} predictions "
                         f"and {len(references)} references.")
    if not predictions:
        return 0.0
    return _unit(_CORPUS_BLEU.corpus_score(list(predictions), [list(references)]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    """BLEU of one answer against its reference as sacreBLEU computes it (``sacrebleu.sentence_bleu``), 0-1 scale.

    sacreBLEU's sentence-level defaults: the ``13a`` tokenizer, ``exp`` smoothing and effective order (n-gram
    orders the answer is too short to have are left out of the mean, so a one-word answer is not zeroed). A
    per-sample score for ranking answers; the mean of it over a set is not corpus BLEU (``corpus_bleu``).

    Args:
        prediction: the generated answer.
        reference: the expected answer.

    Returns:
        BLEU in [0, 1].

    Example:
        >>> sentence_bleu("Yes.", "Yes."), sentence_bleu("yes", "Yes.")  # case and punctuation count
        (1.0, 0.0)
    """
    return _unit(_SENTENCE_BLEU.sentence_score(prediction, [reference]).score)


def _unit(score: float) -> float:
    """sacreBLEU's 0-100 score on the 0-1 scale; its float rounding can read 100.00000000000004 for a perfect match."""
    return min(score / 100, 1.0)


def bleu_signatures() -> dict[str, str]:
    """sacreBLEU's signature of ``corpus_bleu`` and ``sentence_bleu`` (``BLEU.get_signature()``): the settings
    and sacreBLEU version behind the numbers, e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``.
    """
    # BLEU.get_signature() reads the reference count of the last scoring (sacrebleu/metrics/base.py) and fails
    # before any; ours always score one reference per answer, so the signature is built with that count.
    return {name: str(BLEUSignature({**vars(metric), "num_refs": 1}))
            for name, metric in (("corpus_bleu", _CORPUS_BLEU), ("sentence_bleu", _SENTENCE_BLEU))}


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

    * ``"caption"``: ``exact_match``, ``sentence_bleu`` and ``rouge_l``;
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
        (empty when none was scored). When BLEU is scored, the means also hold ``corpus_bleu``: sacreBLEU's
        corpus BLEU over the scored samples (``corpus_bleu``), the figure papers report; the mean of
        ``sentence_bleu`` is a different number.

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
            scores["sentence_bleu"] = sentence_bleu(prediction, reference)
            scores["rouge_l"] = rouge_l(prediction, reference)
        per_sample[i] = scores
    means: dict[str, float] = {}
    if scored:
        for key in per_sample[scored[0]]:
            means[key] = sum(per_sample[i][key] for i in scored) / len(scored)
        if with_text:
            means["corpus_bleu"] = corpus_bleu([predictions[i] for i in scored], [references[i] for i in scored])
    return per_sample, means
