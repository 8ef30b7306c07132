"""Cut reply text into chunks for TTS: sentences, with a short first chunk.

Piper synthesises a chunk at a time, so the first chunk's length is the first-audio latency.
Rules for the first sentence, when it has more than `first_max_words` words:
  1. cut after the first clause mark (, ; : or a dash) within the first first_max_words words;
  2. else, once the sentence is known to have at least first_max_words + 3 words, cut before
     a conjunction at word 3..first_max_words, else after word first_max_words.
Later sentences are one chunk each; very long ones are split at clause marks.
`SentenceChunker` applies the same rules to streamed text and gives the same chunks.
"""

from __future__ import annotations

import re

from voxmesh.mesh.settings import TtsSettings

# The router's first chunk (tts.first_chunk_words): tests that predict the mesh's audio
# chunk as it does.
FIRST_MAX_WORDS = TtsSettings.first_chunk_words

ABBREVIATIONS = frozenset(
    {
        *("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e"),
        *("a.m", "p.m", "u.s", "u.k", "no", "fig", "approx", "dept", "est", "mt", "inc"),
        *("ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep"),
        *("sept", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun"),
        *("ave", "blvd", "rd", "gen", "col", "lt", "sgt", "capt", "rev", "hon"),
    }
)
# These precede a name, so a capital letter after them does not start a sentence.
_NEVER_END = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "e.g", "i.e"})
_CLAUSE_END = (",", ";", ":", "\u2014", "\u2013", "--")
# Conjunctions and relative words: cutting before one keeps phrases whole.
_SOFT_CUT = frozenset(
    {
        *("and", "but", "or", "so", "because", "which", "that", "who", "when", "where"),
        *("while", "if", "than", "then", "until", "unless", "although", "though", "since"),
    }
)
# Words that lead into the next one: a chunk ending on one is said with a falling end and the
# next chunk starts cold ("My brother plays the" / "guitar..." came back from Whisper as
# "the It are"), so a hard cut moves before them.
_LEADS_IN = frozenset(
    {
        *("a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "this", "that"),
        *("these", "those", "to", "of", "in", "on", "at", "for", "with", "from", "by", "very"),
    }
)
_TERMINATOR = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*$")
_MARKUP = "*#`"  # markdown a voice would read out
_BULLET = re.compile(r"^(?:[-+>\u2022]|\d{1,3}[.)])$")  # list markers at a line's start
_MIN_REST = 3  # a hard cut must leave at least this many words for the next chunk


def _ends_sentence(word: str, next_word: str | None) -> bool:
    """Does `word` end a sentence, given the word after it (None = end of text)?"""
    if not _TERMINATOR.search(word):
        return False
    if word.endswith(("!", "?", "\u2026", "...")):
        return True
    stem = word.rstrip(".\"'\u201d\u2019)]").lower().lstrip("(\"'\u201c\u2018")
    if stem in _NEVER_END or (len(stem) == 1 and stem.isalpha()):
        return False  # "Dr. Smith", "J. R. R. Tolkien"
    if next_word is not None and next_word[:1].islower():
        return False  # "e.g. this", "at 3 p.m. today"
    return not (stem in ABBREVIATIONS and next_word is None)


def _decided_end(word: str) -> bool:
    """Ends a sentence whatever comes next ("!", "?"): no need to wait for the next word."""
    return _ends_sentence(word, "X") and _ends_sentence(word, "x")


def _first_cut(words: list[str], max_words: int, complete: bool) -> int | None:
    """How many words of the first sentence go into the first chunk: 0 = the whole sentence,
    None = cannot tell yet (the sentence is still streaming in and may stay short)."""
    n = len(words)
    if n <= max_words:
        return 0 if complete else None
    for i in range(max_words):  # "Well," alone is fine: the comma is a pause anyway
        if words[i].endswith(_CLAUSE_END):
            return i + 1
    if n < max_words + _MIN_REST:
        return 0 if complete else None
    for i in range(max_words - 1, 1, -1):  # latest conjunction, leaving >= 2 words before it
        if words[i].lower().strip(",;:") in _SOFT_CUT:
            return i
    cut = max_words
    while cut > 2 and words[cut - 1].lower() in _LEADS_IN:
        cut -= 1
    return cut


def _split_long(words: list[str], max_words: int) -> list[list[str]]:
    """Split an over-long sentence at clause marks so one chunk never runs on for ages."""
    out: list[list[str]] = []
    cur: list[str] = []
    for w in words:
        cur.append(w)
        if len(cur) >= max_words or (len(cur) >= max_words // 2 and w.endswith(_CLAUSE_END)):
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


class SentenceChunker:
    """Incremental chunker for streamed LLM text: push deltas, get finished chunks.

    A chunk is released as soon as the rules can decide it, e.g. a sentence ending in "."
    once the next word's first letter shows it is not "e.g. this".
    """

    def __init__(self, first_max_words: int = FIRST_MAX_WORDS, max_words: int = 40) -> None:
        self.first_max_words = first_max_words
        self.max_words = max_words
        self._buf = ""
        self._first_done = False
        self._line_start = True
        self._cur: list[str] = []  # words (and "\n" breaks) not yet emitted

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        tokens = re.findall(r"\S+|\n", self._buf)
        # A word is complete once whitespace follows it; the last one may still grow.
        if tokens and tokens[-1] != "\n" and not self._buf[-1:].isspace():
            self._buf = tokens.pop()
        else:
            self._buf = ""
        return self._take(self._clean(tokens), final=False)

    def flush(self) -> list[str]:
        """End of the reply: everything left, as chunks. The chunker can then be reused."""
        tokens = re.findall(r"\S+|\n", self._buf)
        self._buf = ""
        out = self._take(self._clean(tokens), final=True)
        out += self._emit_sentence(self._cur)
        self._cur = []
        self._first_done = False
        self._line_start = True
        return out

    def _clean(self, tokens: list[str]) -> list[str]:
        out: list[str] = []
        for t in tokens:
            if t == "\n":
                self._line_start = True
                out.append(t)
                continue
            w = t.translate({ord(c): None for c in _MARKUP})
            if w and not (self._line_start and _BULLET.match(w)):
                out.append(w)
            self._line_start = False
        return out

    def _take(self, tokens: list[str], *, final: bool) -> list[str]:
        out: list[str] = []
        pending = self._cur + tokens
        start = 0
        for i, w in enumerate(pending):
            if w == "\n":  # a line break ends a sentence (lists, headings)
                out += self._emit_sentence(pending[start:i])
                start = i + 1
                continue
            nxt = pending[i + 1] if i + 1 < len(pending) else None
            if nxt is None and not final:
                if _decided_end(w):
                    out += self._emit_sentence(pending[start : i + 1])
                    start = i + 1
                break
            if _ends_sentence(w, nxt):
                out += self._emit_sentence(pending[start : i + 1])
                start = i + 1
        self._cur = pending[start:]
        if not self._first_done and self._cur and not final:
            cut = _first_cut(self._cur, self.first_max_words, complete=False)
            if cut:
                out.append(" ".join(self._cur[:cut]))
                self._cur = self._cur[cut:]
                self._first_done = True
        return out

    def _emit_sentence(self, words: list[str]) -> list[str]:
        if not words:
            return []
        if not self._first_done:
            self._first_done = True
            cut = _first_cut(words, self.first_max_words, complete=True)
            if cut:
                return [" ".join(words[:cut]), *self._emit_rest(words[cut:])]
        return self._emit_rest(words)

    def _emit_rest(self, words: list[str]) -> list[str]:
        return [" ".join(p) for p in _split_long(words, self.max_words)] if words else []


def split_for_speech(
    text: str, first_max_words: int = FIRST_MAX_WORDS, max_words: int = 40
) -> list[str]:
    """All chunks of a complete reply, first one short. Never splits inside a word."""
    chunker = SentenceChunker(first_max_words, max_words)
    return chunker.push(text) + chunker.flush()
