"""The shapes world: a small synthetic vision-language dataset whose truth is known exactly.

Each 64x64 picture shows one to four coloured shapes on a dark background. Because
the scene behind every picture is recorded, captions can be checked for faithfulness
(does the caption name exactly the objects that are there?), VQA answers are exact,
and a held-out set of colour-shape pairs tests compositional generalisation.

The world is written in the COCO captions and VQAv2 formats, so the same readers and
training code serve it and the real datasets. Generation is byte-for-byte
deterministic for a seed: every split draws from its own seeded random.Random.

Layout written under out_dir (see the path helpers below):
    images/{split}/{image_id:06d}.png
    annotations/captions_{split}.json, annotations/scenes_{split}.json
    vqa/v2_OpenEnded_shapes_{split}_questions.json, vqa/v2_shapes_{split}_annotations.json
    world.json (written last, so its presence means the world is complete)
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from vislm.data.formats.coco import get_field, read_json_object, record_at, top_level_list
from vislm.errors import DataError

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SIZES = ("small", "large")

# Saturated, far apart in hue or brightness, and all bright against the dark background.
COLOR_RGB = {
    "red": (220, 30, 30),
    "green": (40, 200, 60),
    "blue": (50, 100, 255),
    "yellow": (245, 230, 40),
    "purple": (165, 60, 220),
    "orange": (255, 128, 0),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}
SIZE_PIXELS_AT_64 = {"small": 11, "large": 20}  # width of an object's box in a 64-pixel image

DEFAULT_SIZES = {"train": 4000, "val": 300, "test": 500, "comp_test": 300}
COMP_SPLIT = "comp_test"  # the split made of held-out colour-shape pairs
NUM_HELDOUT_PAIRS = 6
MAX_OBJECTS = 4
CAPTIONS_PER_IMAGE = 5
CANONICAL_CAPTION_INDEX = 0  # objects named left to right in a fixed structure
ANSWERS_PER_QUESTION = 10
ANNOTATOR_NOISE = 0.05  # chance that an annotator gives another plausible answer
MAX_DISSENTING = 3  # of ten, so the true answer always has a clear majority
FORMAT_VERSION = 1

ALL_PAIRS = tuple((color, shape) for color in COLORS for shape in SHAPES)
_SUPERSAMPLE = 4  # draw 4x larger and average down: smooth edges keep small shapes recognisable


# --- Layout ----------------------------------------------------------------------------------------


def image_dir(root: str | Path, split: str) -> Path:
    return Path(root) / "images" / split


def captions_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"captions_{split}.json"


def scenes_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"scenes_{split}.json"


def questions_file(root: str | Path, split: str) -> Path:
    return Path(root) / "vqa" / f"v2_OpenEnded_shapes_{split}_questions.json"


def vqa_annotations_file(root: str | Path, split: str) -> Path:
    return Path(root) / "vqa" / f"v2_shapes_{split}_annotations.json"


def world_file(root: str | Path) -> Path:
    return Path(root) / "world.json"


# --- Faithfulness --------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+")


def mentioned_pairs(caption: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a caption names: a colour word followed, possibly
    after one size word, by a shape word ("red circle", "red small circle")."""
    words = _WORD.findall(caption.lower())
    pairs = set()
    for index, word in enumerate(words):
        if word not in COLORS:
            continue
        after = index + 1
        if after < len(words) and words[after] in SIZES:
            after += 1
        if after < len(words) and words[after] in SHAPES:
            pairs.add((word, words[after]))
    return pairs


def caption_is_faithful(caption: str, objects: list[dict]) -> bool:
    """True iff the caption names exactly the scene's (colour, shape) pairs: none
    missing, none invented. This defines the demo's faithfulness metric."""
    return mentioned_pairs(caption) == {(obj["color"], obj["shape"]) for obj in objects}


def spatial_relation(a: dict, b: dict) -> str:
    """Where object a lies relative to b: "left", "right", "above" or "below",
    along the axis on which their boxes are further apart."""
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    gap_x = max(bx0 - ax1, ax0 - bx1)
    gap_y = max(by0 - ay1, ay0 - by1)
    if gap_x >= gap_y:
        return "left" if ax1 <= bx0 else "right"
    return "above" if ay1 <= by0 else "below"


def heldout_pairs(seed: int) -> list[tuple[str, str]]:
    """The colour-shape pairs kept out of train/val/test for this seed.

    Each held-out pair uses a different shape and a different colour, so every colour
    and every shape is still seen in training, just never in these combinations.
    """
    rng = random.Random(f"vislm-shapes/{seed}/heldout")
    count = min(NUM_HELDOUT_PAIRS, len(SHAPES), len(COLORS))
    return sorted(zip(rng.sample(COLORS, count), rng.sample(SHAPES, count)))


# --- Scenes and rendering ------------------------------------------------------------------------


def _scaled(pixels_at_64: int, image_size: int) -> int:
    return max(1, round(pixels_at_64 * image_size / 64))


def _apart(box: tuple[int, ...], other: tuple[int, ...], gap: int) -> bool:
    return (
        box[2] + gap <= other[0] or other[2] + gap <= box[0] or box[3] + gap <= other[1] or other[3] + gap <= box[1]
    )


def _place(rng: random.Random, image_size: int, boxes: list, size: str) -> tuple[str, tuple[int, ...]] | None:
    """A free spot for a new object, by rejection sampling; falls back to "small" if crowded."""
    border, gap = _scaled(2, image_size), _scaled(3, image_size)
    for size_name in dict.fromkeys((size, "small")):
        width = _scaled(SIZE_PIXELS_AT_64[size_name], image_size)
        for _ in range(60):
            x0 = rng.randint(border, image_size - border - width)
            y0 = rng.randint(border, image_size - border - width)
            box = (x0, y0, x0 + width, y0 + width)
            if all(_apart(box, other, gap) for other in boxes):
                return size_name, box
    return None


def sample_scene(
    rng: random.Random,
    image_size: int = 64,
    pair_pool: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ALL_PAIRS,
    required_pair: tuple[str, str] | None = None,
) -> list[dict]:
    """1..MAX_OBJECTS objects with distinct (colour, shape) pairs drawn from pair_pool
    (plus required_pair if given), so "the red circle" is always unambiguous; returned
    left to right."""
    count = rng.randint(1, MAX_OBJECTS)
    pairs = [required_pair] if required_pair else []
    while len(pairs) < count:
        pair = rng.choice(pair_pool)
        if pair not in pairs:
            pairs.append(pair)
    objects, boxes = [], []
    for color, shape in pairs:
        placed = _place(rng, image_size, boxes, rng.choice(SIZES))
        if placed is None:
            continue  # too crowded: the scene gets fewer objects (the first always fits)
        size, box = placed
        boxes.append(box)
        x0, y0, x1, y1 = box
        objects.append(
            {"shape": shape, "color": color, "size": size, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "bbox": list(box)}
        )
    return sorted(objects, key=lambda obj: (obj["x"], obj["y"]))


def render_scene(objects: list[dict], background: tuple[int, int, int], image_size: int = 64) -> Image.Image:
    """Draw a scene; objects are dicts with "shape", "color" and "bbox" (pixels, end exclusive)."""
    canvas = Image.new("RGB", (image_size * _SUPERSAMPLE,) * 2, tuple(background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        box = [coordinate * _SUPERSAMPLE for coordinate in obj["bbox"]]
        _draw_shape(draw, obj["shape"], box, COLOR_RGB[obj["color"]])
    return canvas.reduce(_SUPERSAMPLE)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1  # Pillow's boxes include their last pixel
    width = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        inset = 0.08 * width  # a full-box square looks much bigger than the other shapes
        draw.rectangle([x0 + inset, y0 + inset, x1 - inset, y1 - inset], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        half_arm = 0.18 * width
        draw.rectangle([x0, cy - half_arm, x1, cy + half_arm], fill=fill)
        draw.rectangle([cx - half_arm, y0, cx + half_arm, y1], fill=fill)
    elif shape == "star":
        # A five-pointed star spans 1.81 radii vertically; shift it down to centre it in the box.
        outer, inner = width / 2, 0.42 * width / 2
        centre_y = cy + 0.095 * outer
        points = []
        for corner in range(10):
            radius = outer if corner % 2 == 0 else inner
            angle = -math.pi / 2 + corner * math.pi / 5
            points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


# --- Captions --------------------------------------------------------------------------------------

_NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_RELATION_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "on top of"),
    "below": ("below", "under", "beneath"),
}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_POSITION_PHRASES = {
    ("top", "left"): ("in the top left", "in the top left corner"),
    ("top", "center"): ("at the top", "near the top"),
    ("top", "right"): ("in the top right", "in the top right corner"),
    ("middle", "left"): ("on the left", "at the left side"),
    ("middle", "center"): ("in the center", "in the middle"),
    ("middle", "right"): ("on the right", "at the right side"),
    ("bottom", "left"): ("in the bottom left", "in the bottom left corner"),
    ("bottom", "center"): ("at the bottom", "near the bottom"),
    ("bottom", "right"): ("in the bottom right", "in the bottom right corner"),
}


def position_cell(obj: dict, image_size: int) -> tuple[str, str]:
    """(row, column) of the object's centre in a 3x3 grid, e.g. ("top", "left")."""
    column = min(2, int(obj["x"] * 3 / image_size))
    row = min(2, int(obj["y"] * 3 / image_size))
    return ("top", "middle", "bottom")[row], ("left", "center", "right")[column]


def _describe(obj: dict, with_size: bool) -> str:
    words = [obj["size"]] if with_size else []
    return " ".join(words + [obj["color"], obj["shape"]])


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _canonical_caption(objects: list[dict], image_size: int) -> str:
    """One fixed structure, objects left to right with sizes: a consistent mode to learn."""
    if len(objects) == 1:
        obj = objects[0]
        return f"{_a(_describe(obj, True))} {_POSITION_PHRASES[position_cell(obj, image_size)][0]}"
    if len(objects) == 2:
        left, right = objects
        relation = _RELATION_PHRASES[spatial_relation(left, right)][0]
        return f"{_a(_describe(left, True))} {relation} {_a(_describe(right, True))}"
    listing = _listing([_a(_describe(obj, True)) for obj in objects])
    return f"{_NUMBER_WORDS[len(objects)]} shapes from left to right: {listing}"


def _single_object_caption(objects: list[dict], image_size: int, rng: random.Random) -> str:
    obj = objects[0]
    description = _describe(obj, rng.random() < 0.7)
    where = rng.choice(_POSITION_PHRASES[position_cell(obj, image_size)])
    templates = (
        "there is {a} {where}",
        "the image shows {a} {where}",
        "a picture of {a} {where}",
        "{where} there is {a}",
        "{a} {where} on a dark background",
        "a single {d} {where}",
        "one {d} {where}",
    )
    return rng.choice(templates).format(a=_a(description), d=description, where=where)


def _group_caption(objects: list[dict], image_size: int, rng: random.Random) -> str:
    """Several objects in a random order and phrasing, with one spatial relation."""
    shuffled = rng.sample(objects, len(objects))
    phrases = [_a(_describe(obj, rng.random() < 0.7)) for obj in shuffled]
    first, second = shuffled[0], shuffled[1]
    relation = rng.choice(_RELATION_PHRASES[spatial_relation(first, second)])
    rest = _listing(phrases[2:]) if len(phrases) > 2 else ""
    number = _NUMBER_WORDS[len(objects)]
    short_first, short_second = _describe(first, False), _describe(second, False)
    builders: tuple[Callable[[], str], ...] = (
        lambda: f"there are {number} shapes: {_listing(phrases)}",
        lambda: f"{number} shapes: {_listing(phrases)}",
        lambda: f"a picture of {_listing(phrases)}",
        lambda: f"the image shows {_listing(phrases)}, and the {short_first} is {relation} the {short_second}",
        lambda: f"{phrases[0]} {relation} {phrases[1]}" + (f", and also {rest}" if rest else ""),
        lambda: f"{phrases[0]} is {relation} {phrases[1]}" + (f", and there is also {rest}" if rest else ""),
        lambda: f"the {short_first} is {relation} the {short_second}" + (f"; there is also {rest}" if rest else ""),
    )
    return rng.choice(builders)()


def make_captions(objects: list[dict], image_size: int, rng: random.Random) -> list[str]:
    """CAPTIONS_PER_IMAGE distinct captions, the canonical one first; every caption names
    the colour and shape of every object and never merges objects into a plural."""
    captions = [_canonical_caption(objects, image_size)]
    varied = _single_object_caption if len(objects) == 1 else _group_caption
    for _ in range(500):
        if len(captions) == CAPTIONS_PER_IMAGE:
            return captions
        caption = varied(objects, image_size, rng)
        if caption not in captions:
            captions.append(caption)
    raise RuntimeError(f"could not phrase {CAPTIONS_PER_IMAGE} distinct captions for {objects}")


# --- Questions -------------------------------------------------------------------------------------

# (question, answer, question_type, answer_type) as in VQAv2.
Question = tuple[str, str, str, str]


def _round_robin(pools: list[list]) -> list:
    """The first item of every pool, then every second item, and so on."""
    merged = []
    for index in range(max(len(pool) for pool in pools)):
        merged.extend(pool[index] for pool in pools if index < len(pool))
    return merged


def _counting_questions(objects: list[dict], rng: random.Random) -> list[Question]:
    colors = Counter(obj["color"] for obj in objects)
    absent = [color for color in COLORS if color not in colors]
    # Mostly colours that are present, sometimes one that is absent (answer "0").
    color = rng.choice(sorted(colors)) if rng.random() < 0.7 or not absent else rng.choice(absent)
    questions = [
        ("how many shapes are there?", str(len(objects)), "how many", "number"),
        (f"how many {color} shapes are there?", str(colors[color]), "how many", "number"),
    ]
    return rng.sample(questions, len(questions))


def _attribute_questions(objects: list[dict], rng: random.Random) -> list[Question]:
    """Colour of a shape and shape of a colour, asked only when the answer is unique."""
    shape_counts = Counter(obj["shape"] for obj in objects)
    color_counts = Counter(obj["color"] for obj in objects)
    questions = []
    for obj in objects:
        if shape_counts[obj["shape"]] == 1:
            questions.append((f"what color is the {obj['shape']}?", obj["color"], "what color is the", "other"))
        if color_counts[obj["color"]] == 1:
            questions.append((f"what shape is the {obj['color']} object?", obj["shape"], "what shape is", "other"))
    return rng.sample(questions, len(questions))


def _existence_questions(objects: list[dict], rng: random.Random, absent_pool: list) -> list[Question]:
    """One "yes" and one "no" question, in coin-flip order, so answers stay balanced.
    Half the "no" questions share a colour or a shape with a real object, so they are hard."""
    present = {(obj["color"], obj["shape"]) for obj in objects}
    absent = [pair for pair in absent_pool if pair not in present]
    near_misses = [pair for pair in absent if any(pair[0] == c or pair[1] == s for c, s in present)]
    yes_pair = rng.choice(sorted(present))
    no_pair = rng.choice(near_misses if near_misses and rng.random() < 0.5 else absent)
    questions = [
        (f"is there {_a(' '.join(yes_pair))}?", "yes", "is there a", "yes/no"),
        (f"is there {_a(' '.join(no_pair))}?", "no", "is there a", "yes/no"),
    ]
    return questions if rng.random() < 0.5 else questions[::-1]


def _strictly(relation: str, a: dict, b: dict) -> bool:
    """a lies entirely on the `relation` side of b (boxes do not overlap on that axis)."""
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    return {"left": ax1 <= bx0, "right": bx1 <= ax0, "above": ay1 <= by0, "below": by1 <= ay0}[relation]


def _spatial_questions(objects: list[dict], rng: random.Random) -> list[Question]:
    yes_no, which_shape = [], []
    for a in objects:
        for b in objects:
            if a is b:
                continue
            truth = spatial_relation(a, b)
            asked = truth if rng.random() < 0.5 else _OPPOSITE[truth]
            phrase = _RELATION_PHRASES[asked][0]
            answer = "yes" if asked == truth else "no"
            question = f"is the {_describe(a, False)} {phrase} the {_describe(b, False)}?"
            yes_no.append((question, answer, "is the", "yes/no"))
    for reference in objects:
        for relation, phrases in _RELATION_PHRASES.items():
            # Only when exactly one object lies on that side, so the answer is unique.
            beside = [other for other in objects if other is not reference and _strictly(relation, other, reference)]
            if len(beside) == 1 and spatial_relation(beside[0], reference) == relation:
                question = f"what shape is {phrases[0]} the {_describe(reference, False)}?"
                which_shape.append((question, beside[0]["shape"], "what shape is", "other"))
    return _round_robin([rng.sample(yes_no, len(yes_no)), rng.sample(which_shape, len(which_shape))])


def make_questions(objects: list[dict], rng: random.Random, absent_pool: list[tuple[str, str]]) -> list[Question]:
    """4 to 6 distinct questions, taking kinds in turn (random order) so each image mixes them."""
    pools = [
        _counting_questions(objects, rng),
        _attribute_questions(objects, rng),
        _existence_questions(objects, rng, absent_pool),
        _spatial_questions(objects, rng),
    ]
    rng.shuffle(pools)
    wanted = rng.randint(4, 6)
    chosen: list[Question] = []
    for question in _round_robin(pools):
        if len(chosen) == wanted:
            break
        if question[0] not in {asked[0] for asked in chosen}:
            chosen.append(question)
    return chosen


def annotator_answers(answer: str, rng: random.Random) -> list[dict]:
    """Ten VQAv2-style answers: the truth, except that each annotator, with probability
    ANNOTATOR_NOISE, gives another plausible answer (so soft VQA scores are meaningful).
    At most MAX_DISSENTING annotators disagree, so the truth always keeps a clear majority."""
    answers = []
    dissenting = 0
    for answer_id in range(1, ANSWERS_PER_QUESTION + 1):
        if rng.random() < ANNOTATOR_NOISE and dissenting < MAX_DISSENTING:
            dissenting += 1
            given, confidence = _plausible_alternative(answer, rng), "maybe"
        else:
            given, confidence = answer, "yes"
        answers.append({"answer": given, "answer_confidence": confidence, "answer_id": answer_id})
    return answers


def _plausible_alternative(answer: str, rng: random.Random) -> str:
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if answer.isdigit():
        count = int(answer)
        return str(count + 1 if count == 0 else count + rng.choice((-1, 1)))
    vocabulary = COLORS if answer in COLORS else SHAPES
    return rng.choice([word for word in vocabulary if word != answer])


# --- Writing the world ------------------------------------------------------------------------------


def generate_shapes_world(
    out_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None, image_size: int = 64
) -> Path:
    """Write the whole world under out_dir (layout in the module docstring) and return it.

    Image ids run on across splits (train first, in `sizes` order), so ids and
    question ids (image_id * 10 + k) are unique across the whole world.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    _check_arguments(sizes, image_size)
    out = Path(out_dir)
    heldout = heldout_pairs(seed)
    first_image_id = 1
    for split, count in sizes.items():
        _write_split(out, split, count, first_image_id, seed, image_size, heldout)
        first_image_id += count
    world = {
        "seed": seed,
        "sizes": sizes,
        "image_size": image_size,
        "shapes": list(SHAPES),
        "colors": list(COLORS),
        "heldout_pairs": [list(pair) for pair in heldout],
        "version": FORMAT_VERSION,
    }
    _write_json(world_file(out), world)
    return out


def ensure_shapes_world(
    out_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None, image_size: int = 64
) -> Path:
    """Generate the world unless out_dir already holds a complete one with these settings."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    path = world_file(out_dir)
    if path.is_file():
        try:
            world = read_world(out_dir)
        except DataError:
            world = None
        wanted = {"seed": seed, "sizes": sizes, "image_size": image_size, "version": FORMAT_VERSION}
        if world is not None and all(world.get(key) == value for key, value in wanted.items()):
            return Path(out_dir)
    return generate_shapes_world(out_dir, seed, sizes, image_size)


def _check_arguments(sizes: dict[str, int], image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(
            f"image_size must be an integer of at least 32 (smaller shapes are unrecognisable), got {image_size!r}"
        )
    for split, count in sizes.items():
        if not isinstance(split, str) or not re.fullmatch(r"[a-z0-9_]+", split):
            raise ValueError(f"split names must be lowercase letters, digits and '_', got {split!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"sizes[{split!r}] must be a non-negative integer, got {count!r}")


def _write_split(
    out: Path, split: str, count: int, first_image_id: int, seed: int, image_size: int, heldout: list
) -> None:
    # Separate streams, so that rewording captions or questions leaves the images unchanged.
    scene_rng, caption_rng, question_rng = (
        random.Random(f"vislm-shapes/{seed}/{split}/{purpose}") for purpose in ("scenes", "captions", "questions")
    )
    is_comp = split == COMP_SPLIT
    # Held-out pairs must not appear anywhere in the other splits, not even in a "no" question.
    pair_pool = list(ALL_PAIRS) if is_comp else [pair for pair in ALL_PAIRS if pair not in heldout]
    images_out = image_dir(out, split)
    images_out.mkdir(parents=True, exist_ok=True)

    images, captions, scenes, questions, answers = [], [], [], [], []
    for image_id in range(first_image_id, first_image_id + count):
        required = scene_rng.choice(heldout) if is_comp else None
        objects = sample_scene(scene_rng, image_size, pair_pool, required)
        background = [scene_rng.randint(12, 40) for _ in range(3)]
        file_name = f"{image_id:06d}.png"
        render_scene(objects, tuple(background), image_size).save(images_out / file_name, format="PNG")

        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        scenes.append({"image_id": image_id, "background": background, "objects": objects})
        for index, caption in enumerate(make_captions(objects, image_size, caption_rng)):
            captions.append({"id": image_id * 10 + index, "image_id": image_id, "caption": caption})
        for index, (question, answer, question_type, answer_type) in enumerate(
            make_questions(objects, question_rng, pair_pool)
        ):
            question_id = image_id * 10 + index
            questions.append({"image_id": image_id, "question": question, "question_id": question_id})
            answers.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": question_type,
                    "answer_type": answer_type,
                    "multiple_choice_answer": answer,
                    "answers": annotator_answers(answer, question_rng),
                }
            )

    info = {
        "description": f"vislm shapes world, {split} split",
        "version": str(FORMAT_VERSION),
        "contributor": "vislm",
        "seed": seed,
    }
    license_ = {"name": "CC0 1.0 (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
    _write_json(captions_file(out, split), {"info": info, "licenses": [], "images": images, "annotations": captions})
    _write_json(scenes_file(out, split), {"scenes": scenes})
    vqa_header = {"info": info, "license": license_, "data_type": "shapes", "data_subtype": split}
    _write_json(questions_file(out, split), {**vqa_header, "task_type": "Open-Ended", "questions": questions})
    _write_json(vqa_annotations_file(out, split), {**vqa_header, "annotations": answers})


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


# --- Reading back ----------------------------------------------------------------------------------


def read_world(root: str | Path) -> dict[str, Any]:
    """world.json, checked to be a shapes world this code can read."""
    path = world_file(root)
    world = read_json_object(path, "shapes world description")
    version = world.get("version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: unsupported shapes world version {version!r}, expected {FORMAT_VERSION}")
    sizes = world.get("sizes")
    if not isinstance(sizes, dict):
        raise DataError(f"{path}: field 'sizes' must be an object mapping split names to image counts")
    return world


def read_scenes(path: str | Path) -> dict[int, list[dict]]:
    """image id -> its objects, from a scenes_{split}.json file."""
    path = Path(path)
    items = top_level_list(read_json_object(path, "scenes file"), "scenes", path)
    scenes: dict[int, list[dict]] = {}
    for index in range(len(items)):
        where = f"scenes[{index}]"
        record = record_at(items, index, "scenes", path)
        image_id = get_field(record, "image_id", int, where, path)
        objects = get_field(record, "objects", list, where, path)
        if image_id in scenes:
            raise DataError(f"{path}: {where} repeats image_id {image_id}")
        scenes[image_id] = [_scene_object(objects, number, f"{where}.objects", path) for number in range(len(objects))]
    return scenes


def _scene_object(objects: list, index: int, where: str, path: Path) -> dict:
    obj = record_at(objects, index, where, path)
    where = f"{where}[{index}]"
    for name, vocabulary in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
        value = get_field(obj, name, str, where, path)
        if value not in vocabulary:
            raise DataError(f"{path}: {where}.{name} must be one of {', '.join(vocabulary)}, got {value!r}")
    get_field(obj, "x", float, where, path)
    get_field(obj, "y", float, where, path)
    bbox = get_field(obj, "bbox", list, where, path)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        raise DataError(f"{path}: {where}.bbox must be four numbers [x0, y0, x1, y1], got {bbox!r}")
    return obj
