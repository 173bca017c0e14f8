"""Scores checked against hand-computed values; ``evaluate`` on the tiny PLM: one record per sample, the eval
loss equal to the collator batch's loss, base answers from a disabled adapter equal to the base model's."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_frames, make_image

from plm_tune import PLMCollator, generate, load_model
from plm_tune.inference.evaluation import EvalResult, base_model_context, evaluate, load_eval, save_eval
from plm_tune.inference.metrics import (
    bleu_signatures,
    choice_accuracy,
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    score_answers,
    sentence_bleu,
)

# ---------------------------------------------------------------- metrics


def test_normalize_answer():
    assert normalize_answer('  "The  Left\nLung."  ') == "the left lung"
    assert normalize_answer("3.5 cm, left!") == "3.5 cm, left"  # inner punctuation stays
    assert normalize_answer("«Oui…»") == "oui"  # Unicode punctuation too
    assert normalize_answer(" ... ") == ""


def test_exact_match():
    assert exact_match("Pneumonia.", "pneumonia") == 1.0
    assert exact_match("pneumonia, likely", "pneumonia") == 0.0
    assert exact_match("", "") == 1.0


def test_choice_accuracy_rules():
    assert choice_accuracy("Pneumonia.", "pneumonia") == 1.0  # rule 1: equal labels
    assert choice_accuracy("pneumonia, likely", "pneumonia") == 0.0  # extra words: wrong
    # Rule 3: a letter reference, the prediction's first word spells a letter.
    assert choice_accuracy("B) Effusion", "B") == 1.0
    assert choice_accuracy("(b)", "B)") == 1.0
    assert choice_accuracy("C. Nodule", "(b)") == 0.0
    assert choice_accuracy("Because", "B") == 0.0  # a word starting with b is not the letter
    assert choice_accuracy("", "B") == 0.0
    # Rule 2: with options, letters and option texts are interchangeable.
    choices = ["No finding", "Nodule", "No fracture"]
    assert choice_accuracy("nodule", "B", choices) == 1.0
    assert choice_accuracy("B", "Nodule", choices) == 1.0
    assert choice_accuracy("No fracture, left wrist", "C", choices) == 1.0  # longest option it starts with
    assert choice_accuracy("No finding.", "C", choices) == 0.0
    assert choice_accuracy("Normal", "A", choices) == 0.0  # "no" options match whole words only
    assert choice_accuracy("D", "A", choices) == 0.0  # out-of-range letter picks nothing


# Reference / answer pairs that exercise sacreBLEU's tokenizer and smoothing: an empty answer, punctuation glued to
# words, case, numbers with decimals and units, a hyphen, non-ASCII text, a long answer and an exact match.
PAIRS = [
    ("A 3.5 cm nodule in the right upper lobe.", "A 3.5 cm nodule in the right upper lobe."),
    ("A 3 cm nodule, right upper lobe", "a 3.5cm nodule in the RIGHT upper lobe."),
    ("", "No acute cardiopulmonary abnormality."),
    ("No acute abnormality!!", "No acute cardiopulmonary abnormality."),
    ("Left-sided pleural effusion (moderate).", "Moderate left-sided pleural effusion."),
    ("CT", "CT"),
    ("Fracture of the 5th metatarsal; 2 fragments.", "Fracture of the fifth metatarsal with two fragments."),
    ("Épanchement pleural «gauche» modéré.", "Épanchement pleural gauche modéré."),
    ("The heart size is normal. The lungs are clear. There is no effusion or pneumothorax.",
     "Heart size normal. Lungs clear; no pleural effusion, no pneumothorax."),
]


def test_corpus_bleu_is_sacrebleus_corpus_bleu_on_the_raw_text():
    import sacrebleu

    answers, references = [a for a, _ in PAIRS], [r for _, r in PAIRS]
    expected = sacrebleu.corpus_bleu(answers, [references])  # the call papers' numbers come from
    assert 0 < expected.score < 100
    assert corpus_bleu(answers, references) * 100 == pytest.approx(expected.score, abs=1e-9)
    _, means = score_answers(answers, references)
    assert means["corpus_bleu"] * 100 == pytest.approx(expected.score, abs=1e-9)
    # Each subset too (orders with no match, the brevity penalty): not only one lucky total.
    for cut in range(1, len(PAIRS)):
        expected = sacrebleu.corpus_bleu(answers[:cut], [references[:cut]]).score
        assert corpus_bleu(answers[:cut], references[:cut]) * 100 == pytest.approx(expected, abs=1e-9), cut
    metric = sacrebleu.BLEU()
    metric.corpus_score(answers, [references])
    assert bleu_signatures()["corpus_bleu"] == str(metric.get_signature())
    assert "tok:13a|smooth:exp" in bleu_signatures()["corpus_bleu"]


def test_sentence_bleu_is_sacrebleus_sentence_bleu():
    import sacrebleu

    for answer, reference in PAIRS:
        expected = sacrebleu.sentence_bleu(answer, [reference]).score
        assert sentence_bleu(answer, reference) * 100 == pytest.approx(min(expected, 100.0), abs=1e-9), answer
    per_sample, _ = score_answers([a for a, _ in PAIRS], [r for _, r in PAIRS])
    assert [s["sentence_bleu"] for s in per_sample] == [sentence_bleu(a, r) for a, r in PAIRS]
    assert "eff:yes" in bleu_signatures()["sentence_bleu"]


def test_bleu_hand_computed():
    # 13a tokens: "The cat sat on the mat ." vs "The cat is on the mat .", 7 each, so no brevity penalty.
    # 1-grams 6/7; 2-grams The-cat, on-the, the-mat, mat-. 4/6; 3-grams 2/5; 4-grams on-the-mat-. 1/4.
    expected = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert corpus_bleu(["The cat sat on the mat."], ["The cat is on the mat."]) == pytest.approx(expected)
    # No 4-gram matches: exp smoothing gives that order 1 / (2 * 3 four-grams) instead of zeroing the score.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(expected)
    # Corpus BLEU sums counts over sentences before dividing; "a red dog ran" adds 4/4, 3/3, 2/2, 1/1 matches.
    answers, references = ["the cat sat on the mat", "a red dog ran"], ["the cat is on the mat", "a red dog ran"]
    expected = (9 / 10 * 6 / 8 * 3 / 6 * 1 / 4) ** 0.25
    assert corpus_bleu(answers, references) == pytest.approx(expected)


def test_bleu_edge_cases():
    assert sentence_bleu("Yes.", "Yes.") == 1.0  # capped at 1: sacreBLEU's float sum reads 100.00000000000004
    assert sentence_bleu("yes", "Yes.") == 0.0  # raw text: case and punctuation count, unlike exact_match
    assert sentence_bleu("", "a small nodule") == 0.0
    # Answers shorter than 4 tokens have no 4-gram: sacreBLEU's corpus BLEU gives no credit (read accuracy).
    assert corpus_bleu(["CT", "MR"], ["CT", "MR"]) == 0.0
    assert corpus_bleu([], []) == 0.0
    with pytest.raises(ValueError, match="one reference per prediction"):
        corpus_bleu(["a"], [])


def test_rouge_l_hand_computed():
    # LCS of "police kill the gunman" / "police killed the gunman" is "police the gunman": P = R = 3/4.
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    # LCS "the cat on the mat" = 5 of 6 tokens each.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a b" = 2; P = 2/2, R = 2/4 -> F = 2 * 1 * 0.5 / 1.5.
    assert rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert rouge_l("Same words.", "same words") == 1.0
    assert rouge_l("", "a b") == 0.0 and rouge_l("a b", "") == 0.0


def test_score_answers_kinds_and_unscored():
    per_sample, means = score_answers(["Nodule.", "B", "anything"], ["nodule", "no finding", None])
    assert per_sample[2] == {}  # no reference: not scored, not in the means
    assert set(per_sample[0]) == {"exact_match", "accuracy", "sentence_bleu", "rouge_l"}  # every reference <= 3 words
    assert means["exact_match"] == 0.5 and means["accuracy"] == 0.5
    assert means["corpus_bleu"] == corpus_bleu(["Nodule.", "B"], ["nodule", "no finding"])

    per_sample, means = score_answers(["a long caption here now"], ["a long caption here too"])
    assert set(means) == {"exact_match", "sentence_bleu", "rouge_l", "corpus_bleu"}  # 5 words: no accuracy
    _, means = score_answers(["B) x"], ["B"], kind="choice")
    assert means == {"exact_match": 0.0, "accuracy": 1.0}
    assert score_answers(["x"], [None]) == ([{}], {})
    with pytest.raises(ValueError, match="kind"):
        score_answers(["x"], ["x"], kind="bleu")
    with pytest.raises(ValueError, match="one reference per prediction"):
        score_answers(["x", "y"], ["x"])


# ---------------------------------------------------------------- evaluate


def _samples():
    image_question = [{"type": "image"}, {"type": "text", "text": "Describe"}, {"type": "text", "text": "it."}]
    return [
        {"id": 7, "images": [make_image(56, 56, seed=1)], "messages": [
            {"role": "user", "content": image_question},
            {"role": "assistant", "content": "A square of grey noise with no structure."}]},
        {"uid": "v1", "videos": [make_frames(4, seed=2)], "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": "Nothing."}]},
        {"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "Is it raining?"}, {"role": "assistant", "content": "No."}]},
        {"messages": [{"role": "user", "content": "No answer here?"}]},  # answered, not scored, no loss
    ]


def test_evaluate_records_metrics_and_eval_loss(model, processor, tmp_path):
    samples = _samples()
    collator = PLMCollator(processor)
    result = evaluate(model, processor, samples, max_new_tokens=5, batch_size=2, collator=collator, progress=False)
    assert collator.stats["samples"] == 0  # the training collator's counters (throughput logs) are untouched

    assert [r.index for r in result.records] == [0, 1, 2, 3]
    assert [r.sample_id for r in result.records] == ["7", "v1", None, None]
    assert [r.prompt for r in result.records] == ["Describe it.", "What happens?", "Is it raining?",
                                                  "No answer here?"]
    assert result.records[3].reference is None and result.records[3].scores == {}
    answers = generate(model, processor, samples, max_new_tokens=5, progress=False)
    assert [r.answer for r in result.records] == answers
    assert all(r.base_answer is None and r.base_scores == {} for r in result.records)
    assert result.base_metrics is None

    assert set(result.metrics) == {"exact_match", "sentence_bleu", "rouge_l", "corpus_bleu", "eval_loss", "samples"}
    assert result.metrics["samples"] == 3
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("exact_match", "sentence_bleu", "rouge_l", "corpus_bleu"))
    assert result.info["sacrebleu_signature"] == bleu_signatures()  # the settings behind the BLEU, in eval.json
    # The answered samples as one training batch: its mean token loss is what evaluate found over 2 batches.
    batch = PLMCollator(processor)(samples[:3])
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert math.isfinite(result.metrics["eval_loss"])
    assert result.metrics["eval_loss"] == pytest.approx(expected, abs=1e-5)
    assert result.info["samples"] == 4 and result.info["answered"] == 3
    assert result.info["loss_tokens"] == int((batch["labels"][:, 1:] != -100).sum())
    assert result.info["generation_seconds"] > 0

    path = save_eval(result, tmp_path / "eval" / "result.json")
    assert load_eval(path) == result
    assert isinstance(load_eval(path), EvalResult)

    no_loss = evaluate(model, processor, samples[3:], max_new_tokens=2, compute_loss=False, progress=False)
    assert no_loss.metrics == {"samples": 0.0}


def test_base_answers_from_a_disabled_adapter(model, processor, tiny_plm_path):
    lora, _ = load_model(tiny_plm_path, method="lora", lora_dropout=0.0, dtype=torch.float32)
    # LoRA B starts at zero (the adapter is a no-op): make it large enough to change greedy answers.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    samples = _samples()[1:]  # video, text, unanswered: keeps the test short
    result = evaluate(lora, processor, samples, compare_with="disable_adapter", max_new_tokens=5, progress=False)
    plain = evaluate(model, processor, samples, max_new_tokens=5, progress=False)

    assert [r.base_answer for r in result.records] == [r.answer for r in plain.records]
    assert [r.base_scores for r in result.records] == [r.scores for r in plain.records]
    assert result.base_metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], abs=1e-5)
    assert result.metrics["eval_loss"] != pytest.approx(plain.metrics["eval_loss"], abs=1e-3)
    assert [r.answer for r in result.records] != [r.base_answer for r in result.records]
    # The adapter is back on: the finetuned answers again.
    assert generate(lora, processor, samples, max_new_tokens=5, progress=False) == [r.answer for r in result.records]
    assert result.info["base_model"] == "disable_adapter" and result.info["adapter"] == "default"

    # A base model object is used as given.
    given = evaluate(lora, processor, samples[:1], compare_with=model, max_new_tokens=5, compute_loss=False,
                     progress=False)
    assert given.records[0].base_answer == plain.records[0].answer


def test_base_model_errors(model, processor):
    with pytest.raises(ValueError, match="needs a peft.PeftModel"):
        base_model_context(model)
    with pytest.raises(ValueError, match="needs a peft.PeftModel"):
        evaluate(model, processor, _samples(), compare_with="disable_adapter", progress=False)
    with pytest.raises(ValueError, match="'disable_adapter' or None"):
        evaluate(model, processor, _samples(), compare_with="base", progress=False)
