"""Property tests for splitting long answers: every generated answer is longer than the limit.

Texts mix CJK sentences, Latin words, emoji that are several code points (ZWJ sequences, flags,
skin tones, keycaps), letters with combining marks, stray combining marks and line breaks, so
the splitter meets every kind of character cluster at and around the cut.
"""

from __future__ import annotations

import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.slack.text import SplitPoint, find_split

TERMINATORS = "。！？；．｡"
CLOSERS = "」』）"
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后"
CLUSTERS = [
    "👨\u200d👩\u200d👧\u200d👦",  # a family: four emoji joined by ZWJ
    "🏳\ufe0f\u200d🌈",  # rainbow flag
    "🇯🇵",  # a flag: two regional indicators
    "🇨🇳",
    "👍🏽",  # skin tone modifier
    "1\ufe0f\u20e3",  # keycap
    "e\u0301",  # e + combining acute
    "a\u0323\u0302",  # a + two combining marks
    "\u0301",  # a stray combining mark: it joins whatever precedes it, a space or a full stop too
    "\u200d",  # a stray ZWJ
    "한\u1100",  # Hangul syllable + a trailing jamo
    "\r\n",  # one cluster of two code points
]

_GRAPHEME = regex.compile(r"\X")

_atom = st.one_of(
    st.text(alphabet=CJK, min_size=1, max_size=40),
    st.sampled_from(TERMINATORS),
    st.sampled_from(CLOSERS),
    st.sampled_from(CLUSTERS),
    st.sampled_from(["word ", "Slack ", "model. ", "Why? ", " ", "  ", "\n", "\n\n"]),
)
_cjk_atom = st.one_of(
    st.text(alphabet=CJK, min_size=1, max_size=40),
    st.text(alphabet=CJK, min_size=1, max_size=12),
    st.sampled_from(TERMINATORS),
    st.sampled_from(CLOSERS),
    st.sampled_from([c for c in CLUSTERS if c != "\r\n"]),
)


@st.composite
def _over_the_limit(draw: st.DrawFn, atom: st.SearchStrategy[str]) -> tuple[str, int]:
    """A text and a limit, the text between just over the limit and four times it."""
    limit = draw(st.integers(min_value=40, max_value=300))
    target = limit + draw(st.integers(min_value=1, max_value=3 * limit))
    parts: list[str] = []
    length = 0
    while length < target:
        part = draw(atom)
        parts.append(part)
        length += len(part)
    return "".join(parts), limit


def _boundaries(text: str) -> set[int]:
    return {m.start() for m in _GRAPHEME.finditer(text)} | {len(text)}


def _cuts(text: str, limit: int) -> tuple[list[str], list[int], list[SplitPoint]]:
    """Split all the way: the messages, each cut as an offset into `text`, and the split points."""
    pieces, cuts, points = [], [], []
    start, carry = 0, ""
    while len(carry) + len(text) - start > limit:
        rest = carry + text[start:]
        point = find_split(rest, limit)
        assert point.cut > len(carry), "every message carries some of the answer"
        pieces.append(point.head(rest))
        points.append(point)
        start += point.cut - len(carry)
        cuts.append(start)
        carry = point.reopen
    pieces.append(carry + text[start:])
    return pieces, cuts, points


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_over_the_limit(_atom))
def test_split_messages_fit_rejoin_exactly_and_never_cut_a_character(case: tuple[str, int]) -> None:
    text, limit = case
    assert len(text) > limit
    pieces, cuts, points = _cuts(text, limit)
    assert len(pieces) >= 2
    assert all(len(piece) <= limit for piece in pieces)
    assert not any(p.close or p.reopen for p in points)  # no code fences in these texts
    assert "".join(pieces) == text
    inside = [cut for cut in cuts if cut not in _boundaries(text)]
    assert not inside, [text[cut - 3 : cut + 3] for cut in inside]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_over_the_limit(_cjk_atom))
def test_cjk_text_splits_after_a_sentence_end_when_the_back_half_has_one(case: tuple[str, int]) -> None:
    text, limit = case
    boundaries = _boundaries(text)
    ends = [
        i + 1
        for i, ch in enumerate(text[:limit])
        if ch in TERMINATORS
        and i + 1 in boundaries
        and not (ch == "．" and text[i + 1 : i + 2].isdigit())  # a decimal point before a digit
    ]
    point = find_split(text, limit)
    head = point.head(text)
    assert len(head) <= limit and point.cut in boundaries
    if any(end >= limit // 2 for end in ends):
        assert head.rstrip(CLOSERS)[-1] in TERMINATORS, head[-10:]
        assert point.cut >= max(ends)  # the last sentence end that fits, not an earlier one


def test_a_long_chinese_answer_is_split_after_a_full_stop_not_at_the_limit() -> None:
    sentence = "这是一个很长的句子，用来测试切分。"  # 17 characters
    text = sentence * 300
    point = find_split(text, 3900)
    assert point.cut == 3900 // len(sentence) * len(sentence)
    assert text[: point.cut].endswith("。")


def test_japanese_splits_after_a_closing_quote_that_follows_the_full_stop() -> None:
    text = "彼は「それでいい。」と言った" * 10 + "「終わり！」" + "あ" * 400
    point = find_split(text, 300)
    assert text[: point.cut].endswith("！」")


def test_a_hard_cut_moves_back_to_the_start_of_an_emoji_it_would_split() -> None:
    family = "👨\u200d👩\u200d👧\u200d👦"  # 7 code points
    text = "x" * 98 + family * 10
    point = find_split(text, 100)
    assert point.cut == 98
    assert point.head(text) == "x" * 98


def test_a_flag_and_a_skin_tone_are_never_split() -> None:
    for emoji in ("🇯🇵", "👍🏽", "e\u0301"):
        text = "y" * 99 + emoji * 80
        point = find_split(text, 100)
        assert point.cut == 99, emoji
