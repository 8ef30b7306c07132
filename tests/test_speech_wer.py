"""Word error rate: what counts as an error after normalisation."""

from __future__ import annotations

import pytest

from voxmesh.speech.wer import normalize_text, word_error_rate, word_errors


def test_case_and_punctuation_do_not_count() -> None:
    assert word_error_rate("The cat sat on the mat.", "the cat, sat on the MAT") == 0.0
    assert word_error_rate("It's well-known.", "it's well known") == 0.0


def test_substitution_deletion_insertion() -> None:
    assert word_error_rate("a b c d", "a x c d") == pytest.approx(0.25)
    assert word_error_rate("a b c d", "a c d") == pytest.approx(0.25)
    assert word_error_rate("a b c d", "a b c d e f") == pytest.approx(0.5)


def test_numbers_are_compared_as_written() -> None:
    assert normalize_text("It costs 3.50 for 1,000 people.") == [
        "it",
        "costs",
        "3.50",
        "for",
        "1000",
        "people",
    ]
    assert word_error_rate("ten minutes", "10 minutes") == pytest.approx(0.5)


def test_empty_reference() -> None:
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("...", "hello") == 1.0


def test_corpus_totals() -> None:
    pairs = [("a b", "a b"), ("c d e f", "c x e")]
    edits = sum(word_errors(r, h)[0] for r, h in pairs)
    words = sum(word_errors(r, h)[1] for r, h in pairs)
    assert (edits, words) == (2, 6)
