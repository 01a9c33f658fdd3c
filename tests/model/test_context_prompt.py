"""CoOp context in GLIP's caption: where the context goes, that the class spans shift with it, and that
the vectors enter BERT exactly where the words they replace did."""

from __future__ import annotations

import pytest
import torch

from adapt.model import GLIP
from adapt.model.context_prompt import ContextPrompt, context_words, encode_context_prompt
from adapt.prompt import CaptionPrompt, encode_prompt, load_tokenizer

CLASSES = ["fish", "jellyfish", "penguin"]


def _names(prompt, label: int) -> str:
    tokens = load_tokenizer().convert_ids_to_tokens(prompt.input_ids[prompt.label_to_tokens[label]].tolist())
    return " ".join(tokens).replace(" ##", "")


def test_context_goes_before_every_name_and_the_class_spans_follow_it():
    tok = load_tokenizer()
    prompt, positions = encode_context_prompt(CLASSES, tok, context_words(4, None, tok))
    assert prompt.caption == "x x x x fish. x x x x jellyfish. x x x x penguin"
    assert positions.tolist() == [[1, 2, 3, 4], [7, 8, 9, 10], [14, 15, 16, 17]]
    assert [_names(prompt, k) for k in (1, 2, 3)] == CLASSES  # the positive tokens are the names only
    assert all(tok.convert_ids_to_tokens(int(prompt.input_ids[p])) == "x" for p in positions.flatten())
    # After a manual prompt's own prefix (a space is added where it lacks one), before its name.
    manual = [CaptionPrompt(prefix="a", name="clownfish"), None, CaptionPrompt(suffix=" on ice")]
    prompt, positions = encode_context_prompt(CLASSES, tok, "x x", manual)
    assert prompt.caption == "a x x clownfish. x x jellyfish. x x penguin on ice"
    assert [_names(prompt, k) for k in (1, 2, 3)] == ["clownfish", "jellyfish", "penguin"]
    assert positions.tolist() == [[2, 3], [7, 8], [12, 13]]


def test_no_context_is_the_plain_task_caption():
    tok = load_tokenizer()
    prompt, positions = encode_context_prompt(CLASSES, tok, context_words(0, None, tok))
    plain = encode_prompt(CLASSES, tok)
    assert prompt.caption == plain.caption and torch.equal(prompt.input_ids, plain.input_ids)
    assert prompt.label_to_tokens == plain.label_to_tokens and positions.shape == (3, 0)


def test_init_words_must_be_as_many_word_pieces_as_the_context():
    tok = load_tokenizer()
    assert context_words(4, "a photo of a", tok) == "a photo of a"
    with pytest.raises(ValueError, match="are 4 word pieces, but the context length is 3"):
        context_words(3, "a photo of a", tok)


def test_the_words_own_embeddings_give_exactly_the_written_caption(model: GLIP):
    """inputs_embeds path = input_ids path: BERT adds positions and token types to either alike."""
    tok = load_tokenizer()
    prompt, positions = encode_context_prompt(CLASSES, tok, "a photo of a")
    assert prompt.caption == "a photo of a fish. a photo of a jellyfish. a photo of a penguin"
    ids, mask = prompt.input_ids[None].expand(2, -1), prompt.attention_mask[None].expand(2, -1)
    bert = model.language_backbone
    with torch.no_grad():
        written = model.encode_text(ids, mask)
        words = bert.embeddings.word_embeddings(prompt.input_ids[positions])  # [classes, M, D]
        for context in (words[0], words):  # shared, and one set per class
            got = ContextPrompt(context.clone(), positions, prompt.input_ids).encode(bert, ids, mask)
            assert torch.equal(got.hidden, written.hidden) and torch.equal(got.embedded, written.embedded)


def test_gradients_reach_the_context_through_the_frozen_bert(model: GLIP):
    tok = load_tokenizer()
    prompt, positions = encode_context_prompt(CLASSES, tok, "x x")
    context = ContextPrompt(torch.zeros(3, 2, model.cfg.language.hidden_size), positions, prompt.input_ids)
    bert = model.language_backbone
    frozen = [p.requires_grad for p in bert.parameters()]
    bert.requires_grad_(False)
    try:
        text = context.encode(bert, prompt.input_ids[None], prompt.attention_mask[None])
        text.hidden.square().sum().backward()
    finally:
        for p, flag in zip(bert.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    assert context.context.grad is not None and bool((context.context.grad.abs().sum(-1) > 0).all())
    other = encode_prompt(["fish"], tok)
    with pytest.raises(ValueError, match="learned in the task's own caption"):
        context.encode(bert, other.input_ids[None], other.attention_mask[None])
