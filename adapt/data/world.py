"""A generated grounding world: shapes of many kinds, on varied backgrounds, with marked captions.

Why it exists: the mini GLIP has no released weights, and a random-init model cannot show what
prompt tuning is for (recovering classes whose names the model reads wrongly or not at all). This
world lets ``scripts/pretrain_mini.py`` teach ``glip_mini`` words offline, on a CPU, and then keep
parts of it out of that pretraining, so that tasks on the held-out parts (``adapt.data.world_tasks``)
measure what zero-shot and few-shot adaptation do with words and objects the model never met.

A scene is one image with objects (``Thing``: a shape with a colour, a size and a texture, or a
real tree crown) and one caption whose phrases are marked by character spans, each span grounding
every object it describes, which is how GLIP's grounding data (GoldG, and detection data turned
into captions) is laid out. Captions come in the two styles GLIP pretrains on: a detection-style
list of phrases joined by ". " (the very form of a task's prompt), with absent phrases as
negatives, and a sentence with counts and plurals.

Held out of pretraining, and used only by the tasks:

* ``SYNONYMS``: a word for each of several colours, shapes and sizes that never appears in a
  pretraining caption, so the text encoder (random-init BERT, trained here) never met it;
* ``NOVEL_SHAPES``: shapes never drawn and never named;
* ``HELD_OUT_COMBOS``: colour-shape pairs never drawn and never named, although both words are.

Backgrounds are muted plain, gradient, blotchy or chequered fields, or crops of the NEON tiles of
the demo's *training* split, whose annotated trees become ``tree`` objects (the demo's test tiles
never appear, so the demo's zero-shot AP is on unseen images).

Everything is drawn with PIL from a seed: ``scene(seed, index)`` gives the same pixels, boxes and
caption in every process (``random.Random`` seeded with a string, which Python hashes with
SHA-512 whatever ``PYTHONHASHSEED`` is; no global random state is read or changed).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from PIL import Image, ImageDraw, ImageFilter

# Bump when anything below changes what a seed draws: cached task data is keyed by it.
WORLD_VERSION = 1
IMAGE_SIZE = 128
SUPERSAMPLE = 4  # masks are drawn at 4x and downsampled: antialiased edges, exact boxes

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 215, 30),
    "purple": (148, 60, 189),
    "orange": (255, 127, 14),
    "white": (245, 245, 245),
    "pink": (247, 129, 191),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
NOVEL_SHAPES = ("heart", "crescent", "arrow")
TREE = "tree"
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "ring": "rings",
    "diamond": "diamonds",
    "tree": "trees",
}
# Side length in pixels of each size word; nothing in between, so the word is never ambiguous.
SIZES: dict[str, tuple[int, int]] = {"small": (16, 22), "large": (32, 44)}
TEXTURES = ("plain", "striped", "dotted")
COUNTS = {1: "a", 2: "two", 3: "three", 4: "four"}
MANY = "many"

# Held out of pretraining (see the module docstring).
SYNONYMS: dict[str, str] = {
    "red": "crimson",
    "blue": "azure",
    "yellow": "golden",
    "green": "emerald",
    "purple": "violet",
    "circle": "disk",
    "square": "block",
    "triangle": "wedge",
    "ring": "hoop",
    "cross": "plus",
    "small": "tiny",
    "large": "huge",
}
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("purple", "star"),
    ("orange", "circle"),
    ("white", "triangle"),
    ("pink", "square"),
)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for s in SHAPES for c in COLOURS if (c, s) not in HELD_OUT_COMBOS
)

# Scene composition.
BACKGROUNDS = ("tiles", "plain", "gradient", "blotches", "checks")
BACKGROUND_WEIGHTS = (0.35, 0.15, 0.2, 0.2, 0.1)
MAX_TREE_OCCLUSION = 0.3  # a tree more covered than this by shapes is not annotated
MIN_TREE_VISIBLE = 0.5  # fraction of a tree's box inside the crop for it to be kept (as the demo's tiles)
SENTENCE_STYLE = 0.2  # share of pretraining captions written as a sentence with counts
# Absent phrases per detection-style caption: the discrimination signal, nearly free to compute
# (a caption's padding is skipped by the fusion); some share all but one word with a present
# object (hard), the others are any seen description.
NEGATIVES = (2, 8)
HARD_NEGATIVES = 0.4
# Share of pretraining captions where a word is a positive of a box exactly when it is true of it
# (see _clean_groups); the others also teach words in combination, with hard negatives.
CLEAN_CAPTIONS = 0.7

# Attribute sets a phrase names besides the noun, with their weights.
DESCRIPTIONS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.15),
    (("colour",), 0.4),
    (("size", "colour"), 0.15),
    (("texture", "colour"), 0.15),
    (("size",), 0.05),
    (("texture",), 0.05),
    (("size", "texture", "colour"), 0.05),
)
WORD_ORDER = ("size", "texture", "colour")


@dataclass(frozen=True)
class Thing:
    """One object of a scene: a shape (``colour``/``size``/``texture`` set) or a tree (all None)."""

    kind: str
    colour: str | None
    size: str | None
    texture: str | None
    box: tuple[int, int, int, int]  # COCO x, y, w, h in pixels: the object covers [x, x + w)

    def attribute(self, name: str) -> str | None:
        return {"colour": self.colour, "size": self.size, "texture": self.texture}[name]


@dataclass(frozen=True)
class Description:
    """What a phrase says: a noun and some attributes; it grounds every thing that has them all."""

    kind: str
    colour: str | None = None
    size: str | None = None
    texture: str | None = None

    def matches(self, thing: Thing) -> bool:
        return thing.kind == self.kind and all(
            value is None or thing.attribute(name) == value
            for name, value in (("colour", self.colour), ("size", self.size), ("texture", self.texture))
        )

    def text(self, plural: bool = False) -> str:
        values = {"size": self.size, "texture": self.texture, "colour": self.colour}
        words = [word for name in WORD_ORDER if (word := values[name]) is not None]
        return " ".join([*words, PLURALS[self.kind] if plural else self.kind])


@dataclass(frozen=True)
class Phrase:
    """A marked phrase of a caption: characters ``[start, end)`` and the things it grounds."""

    start: int
    end: int
    objects: tuple[int, ...]


@dataclass
class Scene:
    """An image, its objects and its caption; ``phrases`` index into ``objects``."""

    image: Image.Image
    objects: list[Thing]
    caption: str
    phrases: list[Phrase]

    def phrase_text(self, phrase: Phrase) -> str:
        return self.caption[phrase.start : phrase.end]

    def grounding_record(self) -> dict[str, object]:
        """GLIP/MDETR-style grounding annotations: per object its box and its phrases' spans."""
        spans: list[list[list[int]]] = [[] for _ in self.objects]
        for phrase in self.phrases:
            for i in phrase.objects:
                spans[i].append([phrase.start, phrase.end])
        return {
            "caption": self.caption,
            "objects": [
                {
                    "kind": t.kind,
                    "colour": t.colour,
                    "size": t.size,
                    "texture": t.texture,
                    "bbox": list(t.box),
                }
                for t in self.objects
            ],
            "tokens_positive": spans,
        }


def vocabulary() -> set[str]:
    """Every word a pretraining caption can contain (the held-out words are not among them)."""
    words = set(COLOURS) | set(SHAPES) | {TREE} | set(PLURALS.values()) | set(SIZES) | set(TEXTURES)
    return words | set(COUNTS.values()) | {MANY, "and"}


# ------------------------------------------------------------------------------------------------
# Randomness: one stream per (purpose, seed, index), never the global one


def rng_for(*keys: object) -> random.Random:
    """A private generator for these keys; string seeding is hashed with SHA-512 (stable across runs)."""
    return random.Random("/".join(["adapt-world", str(WORLD_VERSION), *map(str, keys)]))


def _weighted(rng: random.Random, options: Sequence[object], weights: Sequence[float]) -> object:
    return rng.choices(list(options), weights=list(weights), k=1)[0]


# ------------------------------------------------------------------------------------------------
# Drawing


def _polygon(kind: str) -> list[tuple[float, float]]:
    """Outline of a shape in unit coordinates (centred near 0)."""
    if kind == "square":
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if kind == "triangle":
        return [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "star":
        return [
            (r * math.cos(-math.pi / 2 + i * math.pi / 5), r * math.sin(-math.pi / 2 + i * math.pi / 5))
            for i, r in zip(range(10), [1.0, 0.42] * 5, strict=True)
        ]
    if kind == "cross":
        a = 0.34  # half the width of an arm
        corner = [(-a, -1), (a, -1), (a, -a)]  # one arm and the corner after it, turned 4 times
        return [
            (x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in corner
        ]
    if kind == "diamond":
        return [(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]
    if kind == "heart":
        points = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            points.append(
                (
                    16 * math.sin(t) ** 3 / 16,
                    -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 16,
                )
            )
        return points
    if kind == "arrow":
        return [(-1, -0.22), (0.2, -0.22), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.22), (-1, 0.22)]
    raise ValueError(f"no outline for shape {kind!r}")


# How far each shape may turn (degrees): squares and diamonds only a little, so neither becomes
# the other; shapes that stay themselves under any turn turn freely.
ROTATION = {
    "square": 15,
    "diamond": 15,
    "cross": 15,
    "triangle": 180,
    "star": 180,
    "heart": 25,
    "arrow": 180,
    "crescent": 180,
}


def shape_mask(kind: str, width: int, height: int, rng: random.Random) -> Image.Image:
    """An antialiased 'L' mask of ``kind`` whose drawn pixels fill exactly ``width`` x ``height``."""
    canvas = 64 * SUPERSAMPLE
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    c, r = canvas / 2, canvas * 0.4
    if kind in ("circle", "ring"):
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        if kind == "ring":
            inner = r * 0.62
            draw.ellipse((c - inner, c - inner, c + inner, c + inner), fill=0)
    elif kind == "crescent":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        draw.ellipse((c - r + dx, c - r + dy, c + r + dx, c + r + dy), fill=0)
    else:
        turn = math.radians(rng.uniform(-ROTATION[kind], ROTATION[kind]))
        cos, sin = math.cos(turn), math.sin(turn)
        points = [(c + r * (x * cos - y * sin), c + r * (x * sin + y * cos)) for x, y in _polygon(kind)]
        draw.polygon(points, fill=255)
    box = mask.getbbox()
    assert box is not None
    return mask.crop(box).resize((width, height), Image.Resampling.LANCZOS)


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in colour)  # type: ignore[return-value]


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(v * factor) for v in colour)  # type: ignore[return-value]


def texture_fill(
    colour: tuple[int, int, int], texture: str, width: int, height: int, rng: random.Random
) -> Image.Image:
    """The object's paint: a flat colour, diagonal stripes or a grid of dots in a contrasting shade."""
    base = _jitter(colour, rng)
    fill = Image.new("RGB", (width, height), base)
    if texture == "plain":
        return fill
    bright = sum(base) / 3 > 150
    mark = _shade(base, 0.45) if bright else tuple(min(255, v + 110) for v in base)
    draw = ImageDraw.Draw(fill)
    side = max(width, height)
    if texture == "striped":
        period = max(4, side // 4)
        line = max(2, period // 2)
        for k in range(-side, 2 * side, period):
            draw.line((k, 0, k - side, side), fill=mark, width=line)
    elif texture == "dotted":
        period = max(5, side // 3)
        dot = max(1, period // 4)
        ox, oy = rng.randrange(period), rng.randrange(period)
        for y in range(oy - period, height + period, period):
            for x in range(ox - period, width + period, period):
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=mark)
    else:
        raise ValueError(f"unknown texture {texture!r}; known: {TEXTURES}")
    return fill


def _muted(rng: random.Random) -> tuple[int, int, int]:
    grey = rng.randint(50, 190)
    return tuple(max(0, min(255, grey + rng.randint(-35, 35))) for _ in range(3))  # type: ignore[return-value]


def _noise(rng: random.Random, size: int, cells: int) -> Image.Image:
    """Smooth 'L' noise: ``cells`` x ``cells`` random values, upsampled bicubically."""
    small = Image.frombytes("L", (cells, cells), rng.randbytes(cells * cells))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def synthetic_background(kind: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """A muted field with some grain; the object colours stand out from most of them."""
    a, b = _muted(rng), _muted(rng)
    if kind == "plain":
        image = Image.new("RGB", (size, size), a)
    elif kind == "gradient":
        ramp = Image.linear_gradient("L").rotate(
            rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, expand=False
        )
        ramp = ramp.resize((size, size), Image.Resampling.BILINEAR)
        image = Image.composite(Image.new("RGB", (size, size), a), Image.new("RGB", (size, size), b), ramp)
    elif kind == "blotches":
        image = Image.composite(
            Image.new("RGB", (size, size), a),
            Image.new("RGB", (size, size), b),
            _noise(rng, size, rng.randint(3, 8)),
        )
    elif kind == "checks":
        image = Image.new("RGB", (size, size), a)
        draw = ImageDraw.Draw(image)
        period = rng.randint(12, 40)
        soft = tuple((x + y) // 2 for x, y in zip(a, b, strict=True))
        for y in range(0, size, period):
            for x in range(0, size, period):
                if (x // period + y // period) % 2:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=soft)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    return Image.blend(image, grain, 0.06)


@lru_cache(maxsize=1)
def _tree_tiles() -> list[tuple[Image.Image, list[tuple[float, float, float, float]]]]:
    """The demo's training tiles and their tree boxes (x, y, w, h); never its val or test tiles."""
    demo = files("adapt").joinpath("data", "demo")
    data = json.loads(demo.joinpath("annotations", "train.json").read_text())
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for ann in data["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(tuple(ann["bbox"]))
    tiles = []
    for image in sorted(data["images"], key=lambda im: im["file_name"]):
        with demo.joinpath("images", image["file_name"]).open("rb") as f:
            tile = Image.open(f).convert("RGB")
        tiles.append((tile, boxes.get(image["id"], [])))
    return tiles


def tile_background(rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Image.Image, list[Thing]]:
    """A crop of a demo training tile, turned by one of the 8 symmetries of the square, with its trees."""
    tile, boxes = rng.choice(_tree_tiles())
    x0, y0 = rng.randint(0, tile.width - size), rng.randint(0, tile.height - size)
    crop = tile.crop((x0, y0, x0 + size, y0 + size))
    trees = []
    for bx, by, bw, bh in boxes:
        ix1, iy1 = max(bx, x0), max(by, y0)
        ix2, iy2 = min(bx + bw, x0 + size), min(by + bh, y0 + size)
        if ix2 <= ix1 or iy2 <= iy1 or (ix2 - ix1) * (iy2 - iy1) < MIN_TREE_VISIBLE * bw * bh:
            continue
        x, y = round(ix1 - x0), round(iy1 - y0)
        w, h = round(ix2 - x0) - x, round(iy2 - y0) - y
        if w >= 4 and h >= 4:
            trees.append((x, y, w, h))
    flip, turns = rng.random() < 0.5, rng.randrange(4)
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        trees = [(size - x - w, y, w, h) for x, y, w, h in trees]
    for _ in range(turns):  # 90 degrees anticlockwise: (x, y) -> (y, size - x)
        crop = crop.transpose(Image.Transpose.ROTATE_90)
        trees = [(y, size - x - w, h, w) for x, y, w, h in trees]
    crop = Image.blend(crop, Image.new("RGB", crop.size, _muted(rng)), rng.uniform(0.0, 0.15))
    return crop, [Thing(TREE, None, None, None, box) for box in trees]


# ------------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Spec:
    """A thing to place: its kind and attributes (the box comes from placement)."""

    kind: str
    colour: str
    size: str
    texture: str


def random_spec(rng: random.Random, combos: Sequence[tuple[str | None, str]]) -> Spec:
    """A shape of one of ``combos`` (colour None: any colour) with a random size and texture."""
    colour, kind = rng.choice(list(combos))
    return Spec(kind, colour or rng.choice(list(COLOURS)), rng.choice(list(SIZES)), rng.choice(TEXTURES))


def _overlaps(
    box: tuple[int, int, int, int], others: Iterable[tuple[int, int, int, int]], margin: int = 2
) -> bool:
    x, y, w, h = box
    return any(
        x < ox + ow + margin and ox < x + w + margin and y < oy + oh + margin and oy < y + h + margin
        for ox, oy, ow, oh in others
    )


def place(specs: Sequence[Spec], rng: random.Random, size: int = IMAGE_SIZE, tries: int = 40) -> list[Thing]:
    """Boxes for the specs, none touching another; a spec that finds no room is left out."""
    things: list[Thing] = []
    for spec in specs:
        lo, hi = SIZES[spec.size]
        for _ in range(tries):
            side = rng.randint(lo, hi)
            aspect = 1.0 if spec.kind in ("circle", "ring") else rng.uniform(0.8, 1.25)
            w = max(lo, min(hi, round(side * math.sqrt(aspect))))
            h = max(lo, min(hi, round(side / math.sqrt(aspect))))
            if spec.kind in ("circle", "ring"):
                h = w
            box = (rng.randint(0, size - w), rng.randint(0, size - h), w, h)
            if not _overlaps(box, [t.box for t in things]):
                things.append(Thing(spec.kind, spec.colour, spec.size, spec.texture, box))
                break
    return things


def _occlusion(tree: tuple[int, int, int, int], shapes: Iterable[tuple[int, int, int, int]]) -> float:
    x, y, w, h = tree
    covered = 0
    for sx, sy, sw, sh in shapes:
        iw = min(x + w, sx + sw) - max(x, sx)
        ih = min(y + h, sy + sh) - max(y, sy)
        covered += max(0, iw) * max(0, ih)
    return covered / float(w * h)


def render_scene(
    specs: Sequence[Spec], rng: random.Random, background: str | None = None
) -> tuple[Image.Image, list[Thing]]:
    """Draw a background and the specs on it; trees mostly hidden by a shape are dropped."""
    background = background or str(_weighted(rng, BACKGROUNDS, BACKGROUND_WEIGHTS))
    if background == "tiles":
        image, trees = tile_background(rng)
    else:
        image, trees = synthetic_background(background, rng), []
    shapes = place(specs, rng)
    for thing in shapes:
        x, y, w, h = thing.box
        assert thing.colour is not None and thing.texture is not None
        mask = shape_mask(thing.kind, w, h, rng)
        image.paste(texture_fill(COLOURS[thing.colour], thing.texture, w, h, rng), (x, y), mask)
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.6)))
    trees = [t for t in trees if _occlusion(t.box, [s.box for s in shapes]) <= MAX_TREE_OCCLUSION]
    return image, shapes + trees


def describe(thing: Thing, rng: random.Random) -> Description:
    """A random description of ``thing``: its noun and a weighted choice of its attributes."""
    if thing.kind == TREE:
        return Description(TREE)
    names = _weighted(rng, [d for d, _ in DESCRIPTIONS], [w for _, w in DESCRIPTIONS])
    values = {name: thing.attribute(name) for name in names}  # type: ignore[attr-defined]
    return Description(thing.kind, values.get("colour"), values.get("size"), values.get("texture"))


def _allowed(desc: Description) -> bool:
    """Whether a description may appear in pretraining (no held-out pair, no novel shape)."""
    if desc.kind == TREE:
        return desc.colour is None and desc.size is None and desc.texture is None
    return desc.kind in SHAPES and (desc.colour, desc.kind) not in HELD_OUT_COMBOS


def _words(desc: Description) -> set[str]:
    return set(desc.text().split())


def negative(
    things: Sequence[Thing], rng: random.Random, avoid: set[str] | None = None
) -> Description | None:
    """A description that grounds nothing in the scene: often a present one with one word changed.

    With ``avoid`` (a clean caption: the words true of some thing of the scene), none of those
    words, and no hard negative.
    """
    for _ in range(20):
        shapes = [t for t in things if t.kind != TREE]
        if shapes and avoid is None and rng.random() < HARD_NEGATIVES:
            desc = describe(rng.choice(shapes), rng)
            swap = rng.choice(["kind", "colour", "size", "texture"])
            values = {"kind": desc.kind, "colour": desc.colour, "size": desc.size, "texture": desc.texture}
            pools = {"kind": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "texture": TEXTURES}
            values[swap] = rng.choice(pools[swap])
            desc = Description(**values)  # type: ignore[arg-type]
        elif rng.random() < 0.15:
            desc = Description(TREE)
        else:
            spec = random_spec(rng, SEEN_COMBOS)
            desc = describe(Thing(spec.kind, spec.colour, spec.size, spec.texture, (0, 0, 1, 1)), rng)
        if avoid is not None and _words(desc) & avoid:
            continue
        if _allowed(desc) and not any(desc.matches(t) for t in things):
            return desc
    return None


Groups = list[tuple[Description, tuple[int, ...]]]


def _groups(things: Sequence[Thing], rng: random.Random) -> Groups:
    """Phrases that together cover every thing: each a description and all the things it grounds."""
    order = list(range(len(things)))
    rng.shuffle(order)
    groups: Groups = []
    covered: set[int] = set()
    for i in order:
        if i in covered and rng.random() > 0.15:  # now and then a second, overlapping phrase
            continue
        desc = describe(things[i], rng)
        if any(desc == d for d, _ in groups):
            continue
        grounded = tuple(j for j, t in enumerate(things) if desc.matches(t))
        groups.append((desc, grounded))
        covered.update(grounded)
    return groups


def _attributes(thing: Thing) -> set[str]:
    """Every word that is true of ``thing``."""
    return {w for w in (thing.kind, thing.colour, thing.size, thing.texture) if w is not None}


def _clean_groups(things: Sequence[Thing], rng: random.Random, tries: int = 5) -> Groups | None:
    """Covering phrases none of whose words is true of a thing it does not ground, or None.

    Why: GLIP's loss is per token, so every token of a phrase that does not describe a box is a
    negative of that box, even a word that is true of it ("red" in "red square", for a red
    circle). Such captions teach what words mean together, but give a text encoder that knows no
    word yet contradicting targets; in a clean caption a token is positive for a box exactly when
    its word is true of the box, which a model that knows words one by one can already fit.
    """
    for _ in range(tries):
        order = list(range(len(things)))
        rng.shuffle(order)
        groups: Groups = []
        covered: set[int] = set()
        for i in order:
            if i in covered:
                continue
            for desc in (describe(things[i], rng) for _ in range(6)):
                grounded = tuple(j for j, t in enumerate(things) if desc.matches(t))
                if not any(_words(desc) & _attributes(t) for j, t in enumerate(things) if j not in grounded):
                    groups.append((desc, grounded))
                    covered.update(grounded)
                    break
            else:
                break
        else:
            return groups
    return None


def detection_caption(
    groups: Sequence[tuple[Description, tuple[int, ...]]],
) -> tuple[str, list[Phrase]]:
    """Phrases joined by ". ", as adapt builds a task's prompt; each span is the whole phrase."""
    caption, phrases = "", []
    for k, (desc, grounded) in enumerate(groups):
        if k:
            caption += ". "
        start = len(caption)
        caption += desc.text()
        phrases.append(Phrase(start, len(caption), grounded))
    return caption, phrases


def sentence_caption(groups: Sequence[tuple[Description, tuple[int, ...]]]) -> tuple[str, list[Phrase]]:
    """'a red circle, two small squares and many trees': counts outside the spans, plurals inside."""
    caption, phrases = "", []
    for k, (desc, grounded) in enumerate(groups):
        if k:
            caption += " and " if k == len(groups) - 1 else ", "
        n = len(grounded)
        caption += COUNTS.get(n, MANY) + " "
        start = len(caption)
        caption += desc.text(plural=n > 1)
        phrases.append(Phrase(start, len(caption), grounded))
    return caption, phrases


def pretraining_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the pretraining stream ``seed``: only seen words, shapes and pairs."""
    rng = rng_for("pretrain", seed, index)
    specs = [random_spec(rng, SEEN_COMBOS) for _ in range(rng.randint(1, 5))]
    image, things = render_scene(specs, rng)
    if not things:  # a synthetic field whose shapes found no room: never happens with <= 5 shapes
        raise AssertionError(f"pretraining scene {seed}/{index} has no objects")
    clean = _clean_groups(things, rng) if rng.random() < CLEAN_CAPTIONS else None
    groups = clean if clean is not None else _groups(things, rng)
    avoid = {w for t in things for w in _attributes(t)} if clean is not None else None
    if rng.random() < SENTENCE_STYLE:
        caption, phrases = sentence_caption(groups)
    else:
        negatives = [negative(things, rng, avoid) for _ in range(rng.randint(*NEGATIVES))]
        entries = groups + [(d, ()) for d in dict.fromkeys(n for n in negatives if n is not None)]
        rng.shuffle(entries)
        caption, phrases = detection_caption(entries)
    return Scene(image, things, caption, phrases)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adapt.data.world OUT [--seed S] [--count N]``: write scenes to look at."""
    import argparse
    from pathlib import Path

    from adapt.atomic import write_json

    parser = argparse.ArgumentParser(prog="python -m adapt.data.world", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(args.count):
        scene = pretraining_scene(args.seed, i)
        name = f"scene_{args.seed}_{i:05d}.png"
        scene.image.save(args.out / name)
        records.append({"file_name": name, **scene.grounding_record()})
    write_json(records, args.out / "grounding.json")
    print(f"{args.count} scenes in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
