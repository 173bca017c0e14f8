"""Generation: prompts formatted exactly as in training (and as PLM's template), left-padded batches that answer as
each sample would alone, answers cut at PLM's end tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_frames, make_image

from plm_tune import PLMCollator, generate
from plm_tune.inference.generation import end_token_ids


def _question(text, media=("image",), answer=None):
    content = [{"type": kind} for kind in media] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def test_prompt_is_plms_template_with_generation_prompt_and_the_answer_is_the_reference(processor):
    image = make_image(120, 80, seed=3)
    sample = {"messages": _question("What is it?", answer="Noise."), "images": [image]}
    encoded, reference = PLMCollator(processor).encode_prompt(sample)
    expected = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )
    assert encoded.input_ids == expected["input_ids"][0].tolist()
    assert torch.equal(encoded.images[0], expected["pixel_values"][0])
    assert reference == "Noise."
    assert set(encoded.labels) == {-100}


def test_prompt_without_answer_and_multi_turn_history(processor):
    collator = PLMCollator(processor)
    bare, reference = collator.encode_prompt({"messages": _question("Hi?", media=()), "images": []})
    assert reference is None
    history = {"messages": [*_question("Hi?", media=(), answer="Hello."), *_question("And now?", media=("image",))],
               "images": [make_image(56, 56)]}
    encoded, reference = collator.encode_prompt(history)
    assert reference is None  # ends on a user turn: everything is prompt
    assert len(encoded.input_ids) > len(bare.input_ids) and len(encoded.images) == 1
    with pytest.raises(ValueError, match="no user message"):
        collator.encode_prompt({"messages": [{"role": "assistant", "content": "Hello."}]})


def test_left_padded_batch_answers_as_each_sample_alone(model, processor):
    samples = [
        {"messages": _question("Describe.", answer="x"), "images": [make_image(56, 56, seed=1)]},
        {"messages": _question("Describe this wide picture in detail, please."), "images": [make_image(300, 90, 2)]},
        {"messages": _question("What happens?", media=("video",)), "videos": [make_frames(4)]},
        {"messages": _question("Just text, no media at all?", media=())},
    ]
    alone = [generate(model, processor, [s], max_new_tokens=6, details=True, progress=False)[0] for s in samples]
    batched = generate(model, processor, samples, max_new_tokens=6, batch_size=4, details=True, progress=False)
    assert [g.answer for g in batched] == [g.answer for g in alone]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in alone]
    assert len({g.prompt_tokens for g in batched}) == 4  # really ragged: left padding was exercised
    assert batched[0].reference == "x" and batched[1].reference is None
    assert all(0 < g.new_tokens <= 6 for g in batched)
    assert not model.training


def test_answer_stops_at_the_first_end_token(model, processor):
    samples = [{"messages": _question("Describe.", media=())}, {"messages": _question("Describe the colours now.", ())}]
    first = generate(model, processor, samples[:1], max_new_tokens=8, details=True, progress=False)[0]
    # A copy of the random model whose <|eot_id|> row in lm_head is 1.5x that of its 3rd greedy token: it ends
    # its answer where that token would have come. The second row of the batch goes on after the first ends.
    tokenizer = processor.tokenizer
    third = first.token_ids[2]
    ending = copy.deepcopy(model)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    with torch.no_grad():
        ending.lm_head.weight[eot] = 1.5 * ending.lm_head.weight[third]
    got = generate(ending, processor, samples, max_new_tokens=8, details=True, progress=False)
    assert 0 < got[0].new_tokens <= 2  # earlier if an earlier step favoured the boosted row too
    assert got[0].token_ids == first.token_ids[: got[0].new_tokens]
    assert got[0].answer == tokenizer.decode(got[0].token_ids, skip_special_tokens=True).strip()
    assert eot in end_token_ids(tokenizer)


def test_training_mode_is_restored(model, processor):
    model.train()
    try:
        generate(model, processor, [{"messages": _question("Hi?", media=())}], max_new_tokens=2, progress=False)
        assert model.training
    finally:
        model.eval()
