"""Captions, token ids and class -> token maps equal what the official GLIP code produced."""

from __future__ import annotations

import pytest
import torch

from adapt.prompt import (
    CaptionPrompt,
    PromptTooLongError,
    build_caption,
    clean_name,
    encode_prompt,
    encode_prompt_chunks,
    load_tokenizer,
    positive_map,
)

TRAIN_CLASSES = [["fish", "jellyfish", "penguin"], ["shark", "starfish", "puffin", "stingray"]]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_tokenizer_is_shipped_and_cached(tok):
    assert load_tokenizer() is tok
    assert tok.is_fast  # char_to_token needs the fast tokenizer
    assert tok.vocab_size == 30522
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_eval_prompt_matches_oracle(oracle, tok):
    inputs = oracle["inputs"]
    enc = encode_prompt(inputs["categories"], tok)
    assert enc.caption == inputs["caption"]
    assert [list(s) for s in enc.char_spans] == [span[0] for span in inputs["tokens_positive"]]
    for b in range(2):  # both rows of the batch hold the same caption
        assert torch.equal(enc.input_ids, inputs["input_ids"][b])
        assert torch.equal(enc.attention_mask, inputs["attention_mask"][b])
    assert enc.label_to_tokens == inputs["positive_map_label_to_token"]
    assert enc.labels == [1, 2, 3]
    assert enc.input_ids.shape == (256,) and enc.input_ids.dtype == torch.int64
    # The informational normalised map of the fixture is the soft variant, bit for bit.
    soft = positive_map(enc.label_to_tokens, [1, 2, 3], normalize=True)
    assert torch.equal(soft, inputs["positive_map"])


def test_train_prompts_and_positive_maps_match_oracle(oracle, tok):
    train = oracle["train"]
    rows, rows_soft = [], []
    for b, classes in enumerate(TRAIN_CLASSES):
        enc = encode_prompt(classes, tok)
        assert enc.caption == train["captions"][b]
        assert [[list(s)] for s in enc.char_spans] == train["tokens_positive"][b]
        assert torch.equal(enc.input_ids, train["intermediates"]["tokenizer_input"]["input_ids"][b])
        assert torch.equal(enc.attention_mask, train["intermediates"]["tokenizer_input"]["attention_mask"][b])
        labels = train["target_labels"][b]
        rows.append(enc.positive_map(labels))
        rows_soft.append(enc.positive_map(labels, normalize=True))
    # Rows = boxes of the whole batch in image order, binary as the official collator passes them.
    assert torch.equal(torch.cat(rows), train["positive_map"])
    assert torch.equal(torch.cat(rows_soft), train["positive_map_soft"])


def test_clean_name_reproduces_official_quirks():
    assert clean_name("traffic_light") == "traffic light"
    assert clean_name("bottle (glass)") == "bottle "  # nothing stripped
    assert clean_name("a (b) c (d)") == "a "  # greedy parenthesis pattern
    assert clean_name("a   b") == "a  b"  # one pass of "  " -> " "
    assert clean_name("Cottontail-Rabbit") == "Cottontail-Rabbit"


def test_multi_piece_names_use_every_piece(tok):
    enc = encode_prompt(["jetski", "Cottontail-Rabbit", "dog"], tok)
    pieces = tok.convert_ids_to_tokens(enc.input_ids.tolist())
    assert [pieces[i] for i in enc.label_to_tokens[1]] == ["jets", "##ki"]
    assert [pieces[i] for i in enc.label_to_tokens[2]] == ["cotton", "##tail", "-", "rabbit"]
    assert [pieces[i] for i in enc.label_to_tokens[3]] == ["dog"]
    assert positive_map(enc.label_to_tokens, [2]).sum() == 4


def test_aquarium_caption_prompts_mark_only_the_name(tok):
    # Paper Table 10 / odinw_35 Aquarium prompts.
    classes = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
    prompts = [
        CaptionPrompt(prefix=" ", name="fish"),
        CaptionPrompt(name="jellyfish"),
        CaptionPrompt(name="penguin", suffix=" , which is black and white"),
        CaptionPrompt(name="puffin", suffix=" with orange beaks "),
        CaptionPrompt(name="shark"),
        CaptionPrompt(name="starfish"),
        CaptionPrompt(name="stingray", suffix=" which is flat and round"),
    ]
    caption, spans = build_caption(classes, prompts)
    assert caption == (
        " fish. jellyfish. penguin , which is black and white. puffin with orange beaks . shark. "
        "starfish. stingray which is flat and round"
    )
    assert [caption[s:e] for s, e in spans] == classes
    enc = encode_prompt(classes, tok, prompts)
    pieces = tok.convert_ids_to_tokens(enc.input_ids.tolist())
    assert [pieces[i] for i in enc.label_to_tokens[3]] == ["penguin"]  # suffix tokens are context
    assert [pieces[i] for i in enc.label_to_tokens[7]] == ["sting", "##ray"]
    assert "black" in pieces and all(pieces.index("black") not in v for v in enc.label_to_tokens.values())


def test_egohands_prompt_and_renames(tok):
    enc = encode_prompt(["hand"], tok, [CaptionPrompt(prefix=" ", name="hand", suffix=" of a person")])
    assert enc.caption == " hand of a person"
    assert enc.char_spans == [(1, 5)]
    assert enc.label_to_tokens == {1: [1]}
    # A prompt's name replaces the class name verbatim (test-time: not cleaned); None keeps the class.
    caption, _ = build_caption(["Cottontail-Rabbit", "a_b"], [CaptionPrompt(name="rabbit"), None])
    assert caption == "rabbit. a b"
    caption, _ = build_caption(["x"], [CaptionPrompt(name="a_b")])
    assert caption == "a_b"


def test_char_span_fallbacks(tok):
    # A span ending on a space (clean_name leaves "bottle ") falls back to end-2.
    enc = encode_prompt(["bottle (glass)", "dog"], tok)
    assert enc.caption == "bottle . dog"
    assert enc.label_to_tokens == {1: [1], 2: [3]}
    # A span starting on a space falls back to start+1.
    enc = encode_prompt(["x"], tok, [CaptionPrompt(name=" hand")])
    assert enc.label_to_tokens == {1: [1]}
    # A span that maps to no token is skipped (the label gets no tokens, its rows stay zero).
    enc = encode_prompt(["x", "dog"], tok, [CaptionPrompt(name="   "), None])
    assert 1 not in enc.label_to_tokens
    assert positive_map(enc.label_to_tokens, [1, 2]).sum(1).tolist() == [0.0, 1.0]


def test_too_long_prompt_raises_naming_the_classes(tok):
    classes = [f"animal{i}" for i in range(120)]  # "animal", "##N", "." per class: > 256 tokens
    with pytest.raises(PromptTooLongError) as err:
        encode_prompt(classes, tok)
    e = err.value
    assert e.max_query_len == 256 and e.n_tokens > 256
    assert "256" in str(e) and "animal119" in str(e)
    assert e.classes and e.classes[-1] == "animal119" and "animal0" not in e.classes
    # The named classes are exactly those that do not fit: the rest encodes fine.
    first_missing = classes.index(e.classes[0])
    encode_prompt(classes[:first_missing], tok)
    assert isinstance(e, ValueError)


def test_prompt_of_exactly_max_len_fits(tok):
    # "a. a. ... a": 2n + 1 tokens with [CLS]/[SEP]; n = 127 -> 255, plus one two-piece name -> 256.
    classes = ["a"] * 126 + ["jetski"]
    enc = encode_prompt(classes, tok)
    assert int(enc.attention_mask.sum()) == 256
    assert enc.input_ids[-1] == tok.sep_token_id
    with pytest.raises(PromptTooLongError):
        encode_prompt([*classes, "a"], tok)


def test_chunks_fit_are_maximal_and_keep_global_labels(tok):
    classes = [f"animal{i}" for i in range(200)]
    chunks = encode_prompt_chunks(classes, tok)
    assert len(chunks) >= 3
    assert [c for chunk in chunks for c in chunk.class_names] == classes
    assert [lab for chunk in chunks for lab in chunk.labels] == list(range(1, 201))
    for i, chunk in enumerate(chunks):
        assert int(chunk.attention_mask.sum()) <= 256
        assert set(chunk.label_to_tokens) == set(chunk.labels)
        ref = encode_prompt(chunk.class_names, tok)  # same tokens, local labels 1..k
        assert list(chunk.label_to_tokens.values()) == list(ref.label_to_tokens.values())
        if i + 1 < len(chunks):  # greedy: the next class would not have fit
            with pytest.raises(PromptTooLongError):
                encode_prompt([*chunk.class_names, chunks[i + 1].class_names[0]], tok)
    fixed = encode_prompt_chunks(classes, tok, labels=range(11, 211), max_classes_per_chunk=40)
    assert [len(c.labels) for c in fixed] == [40] * 5
    assert fixed[1].labels[0] == 51 and 51 in fixed[1].label_to_tokens


def test_single_class_too_long_for_a_chunk_raises(tok):
    with pytest.raises(PromptTooLongError):
        encode_prompt_chunks(["a " * 300], tok)


def test_positive_map_rows():
    rows = positive_map({1: [1], 2: [3, 4]}, torch.tensor([2, 1, 2, 5]), length=8)
    assert rows.shape == (4, 8) and rows.dtype == torch.float32
    assert rows[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert rows[1].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert rows[3].sum() == 0  # label absent from the prompt
    soft = positive_map({2: [3, 4]}, [2], length=8, normalize=True)
    assert soft[0, 3].item() == pytest.approx(1 / (2 + 1e-6), abs=1e-7)  # README: 0.49999975
