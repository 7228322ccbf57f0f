"""Synthetic text-in-image shards: a character rendered on a cluttered background, with captions and VQA pairs.

The task the paper says a frozen tokenizer is weak at, in miniature: the questions ask about the text (which
character, in which colour), whose thin strokes a reconstruction-only tokenizer with a small codebook blurs into
the textured background and shapes. The glyph is large (3/8 to 5/8 of the image): in the demo, a 2-layer LLM
trained from scratch learns its colour within CPU minutes; with small three-letter words no model read the
image at all (docs/results.md). ``ett-make-shards OUT`` writes ``OUT/caption/{train,val}-NNNNNN.tar``
(png + txt + json) and ``OUT/vqa/{train,val}-NNNNNN.tar`` (png + json question/answers), with ``--conversations``
also ``OUT/conversation/...`` (png + json LLaVA conversations). Deterministic by seed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from webdataset import TarWriter

from ett_lightning.user_errors import whole_number

WORDS = tuple("0123456789ABEHKX")
TEXT_COLOURS = {"red": (220, 30, 30), "green": (20, 170, 40), "blue": (30, 60, 230), "yellow": (245, 220, 20),
                "white": (250, 250, 250), "black": (10, 10, 10)}
BACKGROUNDS = ("plain", "stripes", "checker", "noise", "gradient")
SHAPES = ("circle", "square", "triangle")


@dataclass
class Scene:
    """What one image shows; captions and questions are generated from it."""

    word: str
    colour: str
    background: str
    shapes: list[str]
    font_size: int
    position: tuple[int, int]


GLYPHS = ("scattered", "centred")
"""``scattered``: 3/8 to 5/8 of the image, anywhere in it. ``centred``: 5/8 to 13/16 of the image, within 1/20 of
the image of the centre: a pixel-level MLP reads its character (61 % against 6 % scattered, docs/results.md)."""


def sample_scene(rng: random.Random, image_size: int, glyph: str = "scattered") -> Scene:
    if glyph not in GLYPHS:
        raise ValueError(f"glyph must be one of {GLYPHS}, got {glyph!r}")
    small, large = (3 / 8, 5 / 8) if glyph == "scattered" else (5 / 8, 13 / 16)
    font_size = rng.randint(round(image_size * small), round(image_size * large))
    word = rng.choice(WORDS)
    free_x, free_y = max(0, image_size - font_size * 2 // 3), max(0, image_size - font_size)
    if glyph == "scattered":
        x, y = rng.randint(0, free_x), rng.randint(0, free_y)
    else:
        jitter = image_size // 20
        x = min(free_x, max(0, free_x // 2 + rng.randint(-jitter, jitter)))
        y = min(free_y, max(0, free_y // 2 - font_size // 8 + rng.randint(-jitter, jitter)))
    shapes = rng.sample(SHAPES, rng.randint(0, 2))
    return Scene(word, rng.choice(list(TEXT_COLOURS)), rng.choice(BACKGROUNDS), shapes, font_size, (x, y))


def render(scene: Scene, image_size: int, rng: random.Random) -> Image.Image:
    image = background(scene.background, image_size, rng)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, image_size, rng)
    font = ImageFont.load_default(size=scene.font_size)
    text_colour = TEXT_COLOURS[scene.colour]
    outline = (0, 0, 0) if sum(text_colour) > 380 else (255, 255, 255)
    draw.text(scene.position, scene.word, fill=text_colour, font=font, stroke_width=1, stroke_fill=outline)
    return image


def background(kind: str, size: int, rng: random.Random) -> Image.Image:
    base = tuple(rng.randint(60, 190) for _ in range(3))
    alt = tuple(min(255, max(0, c + rng.choice((-50, 50)))) for c in base)
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    period = rng.randint(3, max(4, size // 6))
    if kind == "stripes":
        for x in range(0, size, 2 * period):
            draw.rectangle([x, 0, x + period - 1, size], fill=alt)
    elif kind == "checker":
        for x in range(0, size, period):
            for y in range(0, size, period):
                if (x // period + y // period) % 2:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=alt)
    elif kind == "noise":
        pixels = image.load()
        for x in range(size):
            for y in range(size):
                jitter = rng.randint(-30, 30)
                pixels[x, y] = tuple(min(255, max(0, c + jitter)) for c in base)
    elif kind == "gradient":
        for x in range(size):
            t = x / max(1, size - 1)
            draw.line([x, 0, x, size], fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(base, alt)))
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, size: int, rng: random.Random) -> None:
    r = rng.randint(size // 10, size // 4)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def caption(scene: Scene) -> str:
    shapes = f" with a {' and a '.join(scene.shapes)}" if scene.shapes else ""
    return f"the text {scene.word} in {scene.colour} on a {scene.background} background{shapes}"


def long_tail_caption(scene: Scene, index: int, seed: int) -> str:
    """The scene's caption cut or extended to a long-tailed length (1-80 bytes, median about 12), as web captions
    are: most short, a few long. Drawn from its own generator, so images and questions stay as without it."""
    rng = random.Random(seed * 7_919 + index)
    length = min(80, max(1, round(rng.lognormvariate(math.log(13), 0.9))))
    text = f"{caption(scene)}, drawn in a {scene.font_size} point font on a small square image"
    return text[:length].strip() or text[0]


def question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, answer type): two in five ask for the text, two for its colour, one is a yes/no shape
    question (the shapes are large: a control that the image is read beyond the text)."""
    kind = rng.choice(("word", "word", "colour", "colour", "shape"))
    if kind == "word":
        return "What is written in the image?", scene.word, "word"
    if kind == "colour":
        return "What colour is the text?", scene.colour, "colour"
    shape = rng.choice(SHAPES)
    return f"Is there a {shape}?", "yes" if shape in scene.shapes else "no", "yes/no"


def conversation(scene: Scene, q: str, a: str) -> list[dict[str, str]]:
    """A LLaVA-style two-turn conversation: the caption, then the sample's VQA question."""
    return [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption(scene)},
            {"from": "human", "value": q}, {"from": "gpt", "value": a}]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_sample(index: int, seed: int, image_size: int, glyph: str = "scattered") -> tuple[bytes, Scene, random.Random]:
    rng = random.Random(seed * 1_000_003 + index)
    scene = sample_scene(rng, image_size, glyph)
    return png_bytes(render(scene, image_size, rng)), scene, rng


def write_split(out: Path, split: str, count: int, offset: int, seed: int, image_size: int, per_shard: int,
                long_tail: bool = False, conversations: bool = False, glyph: str = "scattered") -> None:
    kinds = ("caption", "vqa", "conversation") if conversations else ("caption", "vqa")
    for kind in kinds:
        (out / kind).mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, count, per_shard)):
        name = f"{split}-{shard:06d}.tar"
        with ExitStack() as stack:
            cap, vqa, *chat = [stack.enter_context(TarWriter(str(out / kind / name))) for kind in kinds]
            for index in range(offset + start, offset + min(count, start + per_shard)):
                png, scene, rng = make_sample(index, seed, image_size, glyph)
                key = f"{index:09d}"
                meta = {"word": scene.word, "colour": scene.colour, "background": scene.background,
                        "shapes": scene.shapes, "font_size": scene.font_size}
                text = long_tail_caption(scene, index, seed) if long_tail else caption(scene)
                cap.write({"__key__": key, "png": png, "txt": text, "json": json.dumps(meta)})
                q, a, kind = question(scene, rng)
                vqa.write({"__key__": key, "png": png,
                           "json": json.dumps({"question_id": index, "question": q, "answers": [a],
                                               "answer_type": kind})})
                for writer in chat:
                    writer.write({"__key__": key, "png": png, "json": json.dumps(
                        {"id": key, "conversations": conversation(scene, q, a), "answer_type": kind})})


def make_shards(out: str | Path, num_train: int = 2000, num_val: int = 200, image_size: int = 64, seed: int = 0,
                samples_per_shard: int = 250, long_tail_captions: bool = False, conversations: bool = False,
                glyph: str = "scattered") -> Path:
    """Writes train and val shards of both layouts under ``out``; val images come from disjoint indices.
    ``long_tail_captions`` gives captions of web-like lengths (:func:`long_tail_caption`); ``conversations`` adds
    a third layout, LLaVA-style conversations (:func:`conversation`), under ``out/conversation``; ``glyph`` is
    where and how large the character is drawn (:data:`GLYPHS`)."""
    out = Path(out)
    for split, count, offset in (("train", num_train, 0), ("val", num_val, num_train)):
        write_split(out, split, count, offset, seed, image_size, samples_per_shard, long_tail_captions,
                    conversations, glyph)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ett make-shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--num-train", type=whole_number(1), default=2000)
    parser.add_argument("--num-val", type=whole_number(1), default=200)
    parser.add_argument("--image-size", type=whole_number(16, 1024), default=64, help="side in pixels, 16 to 1024")
    parser.add_argument("--seed", type=whole_number(0), default=0)
    parser.add_argument("--samples-per-shard", type=whole_number(1), default=250)
    parser.add_argument("--long-tail-captions", action="store_true",
                        help="captions of web-like lengths (1-80 bytes, median about 12) instead of full sentences")
    parser.add_argument("--conversations", action="store_true",
                        help="also write OUT/conversation: LLaVA-style two-turn conversations about the same images")
    parser.add_argument("--glyph", choices=GLYPHS, default="scattered",
                        help="the character anywhere at 3/8-5/8 of the image, or large and near the centre")
    args = parser.parse_args(argv)
    out = make_shards(args.out, args.num_train, args.num_val, args.image_size, args.seed, args.samples_per_shard,
                      args.long_tail_captions, args.conversations, args.glyph)
    layouts = "caption, vqa and conversation" if args.conversations else "caption and vqa"
    print(f"wrote {args.num_train} train + {args.num_val} val samples of each layout ({layouts}) under {out}")


if __name__ == "__main__":
    main()
