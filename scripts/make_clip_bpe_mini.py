"""Generate ``adapt/resources/clip-bpe-mini``: a small CLIP-format BPE vocabulary for ``owlv2_mini``.

OWLv2 reads its queries with CLIP's byte-level BPE tokenizer (``vocab.json`` + ``merges.txt``).
The released vocabulary belongs to its authors; a random-init mini model needs only *a* tokenizer of
the same format, so this script learns one: byte-pair merges trained with the ``tokenizers`` library
on adapt's own text (the class names, renames and caption prompts of ``adapt/conf/task``), with
CLIP's normalisation (NFC, whitespace runs -> " ", lowercase), CLIP's pre-tokenisation pattern and
its ``</w>`` end-of-word marker. The layout is CLIP's: ids 0-255 the byte alphabet, 256-511 the same
bytes ending a word (so every string tokenises without an unknown token), then one token per merge in
merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` last (OWLv2 pools the text at the highest
id of each query, which must be the end token).

Deterministic: the same task files give the same two files. Run from the repository root:

    python scripts/make_clip_bpe_mini.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "adapt" / "conf" / "task"
OUT = ROOT / "adapt" / "resources" / "clip-bpe-mini"
VOCAB_SIZE = 1024
SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# CLIP's pre-tokenisation: contractions, letter runs, single digits, other non-space runs.
CLIP_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
EOW = "</w>"


def corpus() -> list[str]:
    """Every class name, rename and caption prompt adapt's task configs carry, in file order."""
    lines: list[str] = []
    for path in sorted(TASKS.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        lines += [str(c) for c in cfg.get("categories") or []]
        lines += [str(v) for v in (cfg.get("renames") or {}).values()]
        for prompt in (cfg.get("caption_prompts") or {}).values():
            lines += [str(prompt.get(k) or "") for k in ("prefix", "name", "suffix")]
    return [line for line in lines if line.strip()]


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2/CLIP's bytes-to-unicode order)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main() -> None:
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=EOW, continuing_subword_prefix=""))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = byte_alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix=EOW,
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    learned = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]

    vocab: dict[str, int] = {}
    for token in alphabet + [c + EOW for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            kept.append((left, right))
    for token in SPECIAL:
        vocab[token] = len(vocab)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    merges_text = "#version: 0.2 (adapt clip-bpe-mini, scripts/make_clip_bpe_mini.py)\n"
    merges_text += "".join(f"{a} {b}\n" for a, b in kept)
    (OUT / "merges.txt").write_text(merges_text, encoding="utf-8")
    # OWLv2 queries are padded to 16 tokens (the text model's positions), as its released tokenizer says.
    settings = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[1],
        "unk_token": SPECIAL[1],
        "pad_token": SPECIAL[1],
        "model_max_length": 16,
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(settings) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(vocab)} tokens, {len(kept)} merges")


if __name__ == "__main__":
    main()
