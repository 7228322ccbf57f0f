"""The synthetic demo data: deterministic by seed, and the glyph layouts draw the character where they say."""

from __future__ import annotations

import random

import pytest

from ett_lightning.convert.synthetic import make_sample, sample_scene

SIZE = 64


def test_samples_are_identical_for_a_seed_and_differ_across_seeds():
    assert make_sample(7, seed=0, image_size=SIZE)[0] == make_sample(7, seed=0, image_size=SIZE)[0]
    assert make_sample(7, seed=0, image_size=SIZE)[0] != make_sample(7, seed=1, image_size=SIZE)[0]


def test_centred_glyphs_are_large_and_near_the_centre_and_scattered_ones_range_over_the_image():
    rng = random.Random(0)
    centred = [sample_scene(rng, SIZE, "centred") for _ in range(500)]
    scattered = [sample_scene(rng, SIZE, "scattered") for _ in range(500)]
    assert min(s.font_size for s in centred) >= 40 and max(s.font_size for s in scattered) <= 40
    centres = [s.position[0] + s.font_size // 3 for s in centred]
    assert max(abs(c - SIZE // 2) for c in centres) <= SIZE // 20 + 2
    assert max(s.position[0] for s in scattered) - min(s.position[0] for s in scattered) > SIZE // 2


def test_an_unknown_glyph_layout_is_refused():
    with pytest.raises(ValueError, match="glyph must be one of"):
        sample_scene(random.Random(0), SIZE, "tiny")
