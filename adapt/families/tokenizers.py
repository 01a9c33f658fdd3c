"""The tokenizers adapt ships, for random-init family models (pretrained ones bring their own).

* ``bert-base-uncased``: BERT's WordPiece vocabulary (``adapt/resources/bert-base-uncased``),
  Grounding DINO's and MM Grounding DINO's tokenizer, the one GLIP uses too.
* ``clip-bpe-mini``: a small CLIP-format byte-level BPE vocabulary learned from adapt's own task
  configs (``scripts/make_clip_bpe_mini.py``), for ``owlv2_mini``. Not CLIP's vocabulary: a real
  OWLv2 checkpoint's processor files carry that one.

Loaded from the package, never from the network.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import Any

from transformers import CLIPTokenizer

from adapt.prompt import load_tokenizer

SHIPPED = ("bert-base-uncased", "clip-bpe-mini")


def shipped_tokenizer(name: str) -> Any:
    """A tokenizer shipped inside adapt, by name; a clear error for any other name."""
    if name == "bert-base-uncased":
        return load_tokenizer(name)
    if name == "clip-bpe-mini":
        with as_file(files("adapt").joinpath("resources", name)) as path:
            return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    raise ValueError(f"tokenizer={name!r}: adapt ships {list(SHIPPED)}; a pretrained model brings its own")
