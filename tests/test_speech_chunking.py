"""Reply text -> TTS chunks: short first chunk, whole words, same result when streamed."""

from __future__ import annotations

import random

import pytest

from voxmesh.speech.chunking import SentenceChunker, split_for_speech

REPLIES = [
    "Sure, I can help with that. The capital of France is Paris.",
    "Well, the capital of France is Paris, which is a lovely city. Dr. Smith lives there, "
    "e.g. in the 5th arrondissement. It costs $3.50 a day!",
    "I think that is a great idea.",
    "The quick brown fox jumps over the lazy dog and then runs away into the forest.",
    "Yes. I think so. Mr. and Mrs. Jones arrived at 3 p.m. today. They left at 5 p.m. Then we ate.",
    "Here is a list:\n1. **Bread** and butter\n2. Eggs\n- Cheese\nDone.",
    "Absolutely, without any doubt whatsoever, my friend; yes.",
    "one two three four five six seven eight nine ten",
    "Really?! That's amazing... Tell me more.",
    "",
]


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        (REPLIES[0], ["Sure, I can help with that.", "The capital of France is Paris."]),
        (
            REPLIES[1],
            [
                "Well,",
                "the capital of France is Paris, which is a lovely city.",
                "Dr. Smith lives there, e.g. in the 5th arrondissement.",
                "It costs $3.50 a day!",
            ],
        ),
        (REPLIES[2], ["I think that is a great idea."]),  # 7 words: not worth a cut
        (
            REPLIES[3],
            ["The quick brown fox jumps over", "the lazy dog and then runs away into the forest."],
        ),
        (
            REPLIES[4],
            [
                "Yes.",
                "I think so.",
                "Mr. and Mrs. Jones arrived at 3 p.m. today.",
                "They left at 5 p.m.",
                "Then we ate.",
            ],
        ),
        (REPLIES[5], ["Here is a list:", "Bread and butter", "Eggs", "Cheese", "Done."]),
        (REPLIES[6], ["Absolutely,", "without any doubt whatsoever, my friend; yes."]),
        (REPLIES[7], ["one two three four five six", "seven eight nine ten"]),
        (REPLIES[8], ["Really?!", "That's amazing...", "Tell me more."]),
        (REPLIES[9], []),
    ],
)
def test_split_for_speech(text: str, chunks: list[str]) -> None:
    assert split_for_speech(text, first_max_words=6) == chunks


def test_cut_before_a_conjunction() -> None:
    text = "I believe we should probably wait until the rain stops before leaving."
    assert split_for_speech(text, first_max_words=6) == [
        "I believe we should probably wait",
        "until the rain stops before leaving.",
    ]


def test_first_chunk_is_short_and_words_stay_whole() -> None:
    for text in REPLIES[:5]:
        for n in (3, 6, 10):
            chunks = split_for_speech(text, first_max_words=n)
            assert len(chunks[0].split()) <= max(n, len(text.split(".")[0].split()))
            assert " ".join(chunks).split() == text.split()


def test_long_sentences_are_split_at_clauses() -> None:
    text = "Word " + ("word " * 29).strip() + ", " + ("more " * 30).strip() + "."
    chunks = split_for_speech("Okay. " + text, max_words=40)
    assert chunks[0] == "Okay."
    assert all(len(c.split()) <= 40 for c in chunks)
    assert chunks[1].endswith(",")


@pytest.mark.parametrize("text", REPLIES)
def test_streaming_gives_the_same_chunks(text: str) -> None:
    want = split_for_speech(text)
    rng = random.Random(42)
    for _ in range(50):
        chunker, got, at = SentenceChunker(), [], 0
        while at < len(text):
            step = rng.randint(1, 8)
            got += chunker.push(text[at : at + step])
            at += step
        assert got + chunker.flush() == want


def test_streaming_releases_chunks_early() -> None:
    chunker = SentenceChunker(first_max_words=6)
    assert chunker.push("Well, the capital of ") == []  # "Well," may be the whole sentence
    assert chunker.push("France is Paris. ") == ["Well,"]  # 7 words: the sentence is long
    assert chunker.push("It") == []  # "Paris." ends a sentence only if "It..." is capitalised
    assert chunker.push(" is") == ["the capital of France is Paris."]
    assert chunker.push(" big! ") == ["It is big!"]
    assert chunker.flush() == []
    assert chunker.push("Hi there. ") == [] and chunker.flush() == ["Hi there."]  # reusable


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("My brother plays the guitar every evening.", "My brother plays"),
        ("Please bring me a glass of cold water.", "Please bring me"),
    ],
)
def test_a_hard_cut_never_leaves_an_article_or_preposition_hanging(text: str, first: str) -> None:
    assert split_for_speech(text, first_max_words=4)[0] == first
