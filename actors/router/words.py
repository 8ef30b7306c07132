"""What the words ASR heard mean for turn-taking: do they take the floor from the bot
(``interrupts``), carry the user's just-ended turn on (``goes_on``), and does the user's
sentence stop short (``ends_mid_sentence``)?

Pure functions of the text; the router's turn engine (turns.py) acts on them.
"""

from __future__ import annotations

import re

from voxmesh.speech.wer import normalize_text

# Sounds that are not words: ASR hearing only these during a barge-in is a backchannel
# ("mm-hmm", "uh"), not a reason to stop the bot (docs/turn-taking.md).
FILLERS = frozenset(
    {"uh", "um", "uhm", "er", "erm", "ah", "aah", "oh", "eh", "hm", "hmm", "mm", "mmm", "mhm"}
    | {"huh"}  # "uh-huh" normalises to "uh huh"
)


# A hum held longer is still a hum: Whisper writes espeak's "Mm-hmm." as "Mmmmm", and a
# long "uh" as "Uhhh"; repeated letters collapse before the FILLERS check ("mmmmm" -> "m").
_REPEATS = re.compile(r"(.)\1+")


def _is_filler(word: str) -> bool:
    held = _REPEATS.sub(r"\1", word)
    return word in FILLERS or held in FILLERS or held == "m"


def _words(text: str) -> list[str]:
    """The words in ASR's ``text``: fillers, however long held, and the lone letters Whisper
    writes for a hum or an "ah" ("H", "X", "I") are not words."""
    return [w for w in normalize_text(text) if len(w) > 1 and not _is_filler(w)]


# What a listener says to keep the speaker going: heard alone during a reply, the bot
# carries on (docs/turn-taking.md).
BACKCHANNELS = frozenset(
    {"yeah", "yes", "yep", "yup", "okay", "ok", "right", "sure", "alright", "see", "cool"}
    | {"nice", "wow", "exactly", "totally", "true", "gotcha"}  # "mm-hmm", "uh-huh": FILLERS
)
# Words that say nothing alone: a burst heard as only these (and backchannels) does not take
# the floor. tiny.en writes them for a hum: "and then them." for espeak's "Mm-hmm." after
# the echo canceller, "in in then" in another voice (bench/echo.py); a user who means to
# take the floor with "and then..." goes on, and more words, or BACKCHANNEL_MAX_S, stop it.
_EMPTY = frozenset({"a", "an", "the", "and", "then", "them", "in", "of", "it"})
# A lone word over the reply takes the floor only if people take it with that word: Whisper
# makes one up for a short noise ("Bye." for espeak's "Right." after the echo canceller,
# "you", "thank"), and a user who means to interrupt with another word goes on. Two words or
# more do (Pipecat's MinWordsInterruptionStrategy and LiveKit's min_interruption_words make
# the same trade with a word count alone), unless Whisper doubts the window (NO_SPEECH_WORD).
# The bot waits LONE_WORD_WAIT_S after tentative words: speech again within it interrupts.
FLOOR_WORDS = frozenset(
    {"stop", "wait", "no", "nope", "hold", "hey", "sorry", "excuse", "pardon", "actually"}
    | {"but", "what", "why", "how", "when", "where", "who", "which", "enough", "quiet"}
    | {"cancel", "pause", "listen", "hello", "help"}
)
# Words Whisper decodes from a window it finds this likely to hold no speech are a
# hallucination in a noise ("you", "Thank you.", "I'm going to go to the"), not the user
# (speech measured < 0.5): they do not take the floor, however many, but may start a sentence
# (``tentative``). Measured on people's backchannels and turn starts over the bot's echo
# (bench/echo_human.py, docs/turn-taking.md).
NO_SPEECH_WORD = 0.5
# Nor do words from a window Whisper half calls silence and decodes unsurely: its
# hallucinations over a hum ("And then for me.", "It's not the same." for espeak's "Mm-hmm."
# after the canceller: no_speech 0.21-0.44, mean log-probability -0.65 to -1.93). A turn start
# heard so goes on, and its next words or BACKCHANNEL_MAX_S stop the bot (docs/turn-taking.md).
DOUBT_NO_SPEECH = 0.3
DOUBT_LOGPROB = -0.6
LONE_WORD_WAIT_S = 0.5
# A burst heard as nothing resumes the reply after this much more silence; speech in it is
# the same burst going on ("Wait, | stop": tiny.en hears the canceller's "Wait," as nothing),
# judged whole at its next silence, so the bot does not play on over the user for a moment.
# Through the mesh, espeak's comma brought the speech back 169 ms after ASR's answer.
RESUME_GRACE_S = 0.25
# A barge-in ASR keeps hearing only backchannels in is still an interruption after this.
BACKCHANNEL_MAX_S = 1.5


def doubted(no_speech: float, logprob: float = 0.0) -> bool:
    """Does Whisper doubt the words it heard: a window it calls likely silence, or half
    calls silence and decodes unsurely?"""
    return no_speech >= NO_SPEECH_WORD or (no_speech >= DOUBT_NO_SPEECH and logprob < DOUBT_LOGPROB)


def interrupts(text: str, no_speech: float = 0.0, logprob: float = 0.0) -> bool:
    """Do these words, heard over the bot, take the floor? Backchannels, fillers and words
    that say nothing alone do not; a lone other word only if it is a FLOOR_WORD; none that
    Whisper doubts (``doubted``)."""
    if doubted(no_speech, logprob):
        return False
    words = _content(text)
    if len(words) == 1:
        return words[0] in FLOOR_WORDS
    return len(words) > 1


def tentative(text: str, no_speech: float = 0.0, logprob: float = 0.0) -> bool:
    """Words that do not take the floor but may start a sentence that does: one word that is
    not a FLOOR_WORD ("with" for a "Wait," after the echo canceller, "Bye."), or any Whisper
    doubts. More speech soon after them interrupts."""
    return bool(_content(text)) and not interrupts(text, no_speech, logprob)


def goes_on(text: str) -> bool:
    """Do these words, heard over a reply the user's own turn has just had (within
    router.continue_ms), carry that turn on ("..., please", "...the | way to the museum")?
    Any word that says something does, even alone in a window Whisper calls likely silence:
    tiny.en gives espeak's "please" after a pause no_speech 0.37-0.53 (bench/turns.py), and
    right after the user's own words a short word is theirs far more often than a noise's; a
    wrong guess costs the reply starting again on the same turn. Backchannels and fillers
    do not."""
    return bool(_content(text))


def _content(text: str) -> list[str]:
    return [w for w in _words(text) if w not in BACKCHANNELS and w not in _EMPTY]


# Words an English sentence seldom ends on: articles, some prepositions and conjunctions,
# possessives, forms of "be", some modals. Heard last before a pause, the user is
# mid-sentence ("I would like to go to", "My favourite colour is", "maybe we could"),
# whatever the pause sounds like. Left out because answers end on them ("come in", "hold
# on", "I can", "I will", "I like that"): a wrong guess here costs vad.max_silence_ms of
# waiting, not a cut sentence. A question may end on any ("is it?"): a "?" overrides this.
_DANGLING = frozenset(
    {"a", "an", "the", "to", "of", "into", "with", "from", "and", "or", "but", "because"}
    | {"if", "than", "my", "your", "our", "their", "is", "are", "was", "were"}
    | {"could", "would", "should", "must"}
)


def ends_mid_sentence(text: str) -> bool:
    """Does ASR's ``text`` of a turn so far stop short of a sentence's end? A trailing word a
    sentence does not end on, a filler, an ellipsis or a comma says it does."""
    t = text.strip()
    if not t or t.endswith("?") or t.endswith("!"):
        return False
    if t.endswith("...") or t.endswith(","):
        return True
    words = normalize_text(t)
    return bool(words) and (words[-1] in _DANGLING or _is_filler(words[-1]))
