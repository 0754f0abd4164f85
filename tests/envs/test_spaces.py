from __future__ import annotations

import pickle
import re

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.spaces.utils import flatten, unflatten

import envs
from envs import PROMPT_CHARSET, Charset, CharsetText
from envs.spaces import observation_space

UNICODE_PROMPTS = [
    "Sois gentil ☕ — réponds en une phrase 😀",
    "日本語で答えてください。\n\t- 丁寧に",
    "Ответь кратко. Ελληνικά. עברית. العربية. हिन्दी",
    "",
]


@pytest.fixture(scope="module")
def expanded() -> spaces.Text:
    """The same charset as a plain Gymnasium Text space (the reference for membership)."""
    return spaces.Text(100, min_length=0, charset="".join(PROMPT_CHARSET.characters))


def test_registered_env_observation_space_repr_names_the_charset() -> None:
    env = gymnasium.make(envs.ENV_ID)
    try:
        text = repr(env.observation_space)
        assert len(text) < 2_000
        assert "charset=prompt" in text
    finally:
        env.close()


@pytest.mark.parametrize("prompt", UNICODE_PROMPTS)
def test_unicode_prompts_are_contained(prompt: str, expanded: spaces.Text) -> None:
    space = CharsetText(100)
    assert space.contains(prompt)
    assert expanded.contains(prompt)


@pytest.mark.parametrize("text", ["\x00", "a\ud800b", "\ufffe", "\x7f", "\U0010ffff"])
def test_characters_outside_the_charset_are_rejected(text: str, expanded: spaces.Text) -> None:
    assert not CharsetText(100).contains(text)
    assert not expanded.contains(text)


def test_membership_and_index_match_the_expanded_text_space(expanded: spaces.Text) -> None:
    space = CharsetText(100)
    codes = np.random.default_rng(0).integers(0, 0x110000, size=20_000)
    for code in [*codes.tolist(), 0x09, 0x0A, 0x0B, 0x0D, 0x1FAFF, 0x1FB00, 0xD7FF, 0xE000]:
        char = chr(code)
        assert space.contains(char) == expanded.contains(char), hex(code)
        if expanded.contains(char):
            assert space.character_index(char) == expanded.character_index(char)
    assert len(PROMPT_CHARSET) == len(expanded.character_set)


def test_length_bounds_and_non_strings() -> None:
    space = CharsetText(5, min_length=1)
    assert space.contains("abcde")
    assert not space.contains("")
    assert not space.contains("abcdef")
    assert not space.contains(b"abc")
    assert not space.contains(None)


def test_equality_with_plain_text_and_between_lengths(expanded: spaces.Text) -> None:
    assert CharsetText(100) == expanded
    assert expanded == CharsetText(100)
    assert CharsetText(100) == CharsetText(100)
    assert CharsetText(100) != CharsetText(101)
    ascii_only = Charset("ascii", ((0x20, 0x7F),))
    assert CharsetText(100, charset=ascii_only) != CharsetText(100)


def test_sample_flatten_and_pickle_round_trip() -> None:
    space = CharsetText(60, seed=0)
    sample = space.sample()
    assert space.contains(sample)
    for text in [*UNICODE_PROMPTS, sample]:
        assert unflatten(space, flatten(space, text)) == text
    restored = pickle.loads(pickle.dumps(space))
    assert restored == space
    assert repr(restored) == "CharsetText(0, 60, charset=prompt)"


def test_observation_space_builds_without_expanding_the_charset() -> None:
    charset = Charset("fresh", PROMPT_CHARSET.ranges)
    space = CharsetText(100, charset=charset)
    observation_space(["rules"], ["exact_match"])
    assert space.contains("☕")
    assert "characters" not in vars(charset)


@pytest.mark.parametrize(
    "ranges",
    [((0x20, 0x20),), ((0x30, 0x40), (0x35, 0x50)), ((0x40, 0x50), (0x20, 0x30)), ((0, 0x110001),)],
)
def test_bad_ranges_are_rejected(ranges: tuple[tuple[int, int], ...]) -> None:
    with pytest.raises(ValueError, match=re.escape("Expects sorted, non-overlapping")):
        Charset("bad", ranges)


def test_bad_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape("Expects 0 <= min_length <= max_length")):
        CharsetText(3, min_length=4)
