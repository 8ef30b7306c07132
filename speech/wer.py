"""Word error rate with light normalisation (case, punctuation); numbers are kept as written."""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 -> 1000
_DASHES = re.compile(r"[-\u2010-\u2015/]+")  # well-known -> well known
_NOT_WORD = re.compile(r"[^\w\s'.]+")
_STRAY = re.compile(r"(?<!\d)\.|\.(?!\d)")  # keep decimal points (3.5), drop full stops
_EDGE_QUOTES = re.compile(r"(?<!\w)'|'(?!\w)")  # quote marks, not contractions


def normalize_text(text: str) -> list[str]:
    """Lower-case words without punctuation, for comparing transcripts."""
    t = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    t = _THOUSANDS.sub("", t)
    t = _DASHES.sub(" ", t)
    t = _NOT_WORD.sub(" ", t)
    t = _STRAY.sub(" ", t)
    t = _EDGE_QUOTES.sub(" ", t)
    return t.split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edits, reference words): sum both over a corpus for a corpus-level WER."""
    r, h = normalize_text(ref), normalize_text(hyp)
    return edit_distance(r, h), len(r)


def word_error_rate(ref: str, hyp: str) -> float:
    """Edits / reference words. An empty reference scores 0.0 if hyp is empty too, else 1.0."""
    edits, n = word_errors(ref, hyp)
    if n == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / n
