"""The GSM8k verifiable reward: find the number a reply commits to as its answer, compare it.

That is often not the last number: replies restate or convert the answer ("18 dollars, or 1800
cents"), take a number back ("Wait, I made an error: it is 22"), close with an offer ("want 2
more examples?"), or answer first and explain after. The committed number is, in order:

1. after the last correction cue ("Wait,", "Actually,", "I made a mistake") that a number
   follows, only the text after it counts;
2. the last ``\\boxed{...}``; the ``#### N`` lines (none when they disagree); the last answer
   marker, before ("The answer is") or after ("48 is the answer", "This is the answer.") its
   number, where an equation gives its result and an expression its value; the last bold number;
3. else the concluding statement. A long reply cut off mid-sentence concludes nothing. Code,
   questions, parentheses, restating clauses (", which is 1800 cents", ", not 48"), asides
   ("That's $12.75 each.") and, once a new number is stated, everything from a closing offer,
   note, check or "Here's how" on are set aside. A reply opening with a bare amount ("90 km.")
   commits to it; else the last statement (skipping trailing ones that only repeat known
   numbers) gives its equation's result or its last number that is not a given of the question.

Offering alternatives ("either 12 or 14", "... depending on ...", two "If ..." answers) commits
to none. A reply that only asks, or is empty, is no attempt.

Numbers are read by :mod:`userlm_env.tasks.numbers` (digits, words, fractions, percentages,
LaTeX; math-verify for LaTeX boxes and answer expressions). Values compare exactly, decimals
within a tiny relative tolerance; 25% matches 25 and 0.25, "N below zero" matches N and -N. A
value math-verify read is judged by its ``verify``, with its signal-based timeouts off (they
fail outside the main thread and would clobber the caller's ``SIGALRM``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from userlm_env.errors import DataError
from userlm_env.tasks.numbers import (
    NUMBER_RE,
    WORDS_RE,
    Found,
    any_numbers,
    digit_numbers,
    from_match,
    math_verify_value,
    parse_number,
    show_number,
    unwrap_latex,
    word_numbers,
)
from userlm_env.types import Intent, Score

__all__ = ["MathScorer", "extract_answer", "is_answer_attempt", "parse_number"]

# fmt: off
_I = re.IGNORECASE
_MARKER_RE = re.compile(r"final answer\s*(?:is|=|:)?|answer\s*(?:is|=|:)|\bans\s*:", _I)
_POST_MARKER_RE = re.compile(r"(?:\b(?:this|that)(?:'s| is)|\bis)\s+(?:the|my|our) answer\b", _I)
_CORRECTION_RE = re.compile(
    r"(?:^|(?<=[.!?:;—–-])|(?<=\n))\s*(?:wait|hmm,? wait|hold on|actually|oops|correction|sorry"
    r"|on second thought|scratch that)\b|\bI (?:made an? (?:error|mistake)|miscalculated"
    r"|subtracted wrong|added wrong|forgot)|\b(?:that|this)(?:'s| is| was) (?:not right|wrong"
    r"|incorrect)|\bthat can't be right|\blet me (?:re\w+|correct|fix) (?:that|this)?", _I)
_TAIL_RE = re.compile(  # a sentence from which on the reply has stopped answering
    r"^\W*(?:let me know|i hope|hope (?:this|that)|feel free|if you(?:'d| would)? (?:like|want|need"
    r"|have)|would you like|want me to|do you want|happy to|i can also|note\b|p\.?s\b|tip\b"
    r"|double[- ]check|check\b|let me (?:verify|check|double)|verif|sanity|here(?:'s| is) (?:how"
    r"|why|the (?:breakdown|math|work))|breakdown|explanation|reasoning|work:|how i got)", _I)
_ASIDE_RE = re.compile(  # a sentence that restates or comments rather than concludes
    r"^\W*(?:(?:[\w-]+,?\s+){0,5}?(?:that's|that is|which is)|this is|i\.e\.|in other words"
    r"|in cents|after that|if\b|the other|the rest|each of|per \w+|without|for comparison"
    r"|for reference|this (?:problem|calculation|formula|example|method|approach|solution"
    r"|represents))", _I)
_RESTATE_RE = re.compile(  # where a sentence goes on to restate its number
    r"(?:,|;|\s[—–]|\s--?\s)\s*(?:which (?:is|equals|means|comes to)|i\.e\.|that is|that's|or\b"
    r"|not\b|about|roughly|approximately|since|because|as\b|meaning)|\s[—–]\s"
    r"|\scompared (?:to|with)\b|\sthan\b", _I)
_HEDGE_RE = re.compile(
    r"\beither\b.*\bor\b|\bdepend(?:s|ing)? on\b|\b(?:anywhere|somewhere) (?:from|between)\b"
    r"|\bnot sure\b|\b(?:could|might) (?:also |well )?be\s+\$?\d", _I)
_CONCLUSION_RE = re.compile(
    r"^\W*(?:so|therefore|thus|hence|in total|altogether|overall|in all|finally|total)\b"
    r"|,\s*so\b|\btherefore\b", _I)
_SO_RE = re.compile(r",\s*(?:and\s+)?(?:so|therefore|thus|hence)\b", _I)
_LONE_ONE_RE = re.compile(
    r"(?<![\w-])one\b(?!\s+and\s+a\s+half|[\s-]+(?:hundred|thousand|million))", _I)
_CONDITION_RE = re.compile(r"\W*(?:if|assuming)\b", _I)
_RATIO_RE = re.compile(r"\d[\d,.]*\s+(?:out\s+)?of\s+(?:the\s+)?\$?\d[\d,.]*")
_OPERATOR_RE = re.compile(r"[=×*÷+→]|\s[-−–/]\s")
_EXPRESSION_RE = re.compile(r"[\d.()]+(?:\s*[-+*/×÷]\s*[\d.()]+)+")
_SENTENCE_RE = re.compile(r"(?<=[.!?])(?<!\bi\.e\.)(?<!\be\.g\.)\s+|\n")
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,80}?)\*\*|__([^_\n]{1,80}?)__")
_LABEL_RE = re.compile(r"^\W*(?:step|part|case|day|week|option|method)\b|:\W*$", _I)
_CODE_RE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
# fmt: on
_MARKER_REACH = 300  # how far (in characters) an answer marker's sentence is looked for
_MAX_MARKERS = 32  # only the last answer markers are read (a reply may repeat one endlessly)
_CUT_OFF_CHARS = 600  # a longer reply that ends without a closing mark was cut off
logging.getLogger("math_verify.grader").addFilter(  # its timeouts are off on purpose
    lambda r: "Timeout is disabled" not in r.getMessage()
)


_HEDGED = Found(Fraction(0), hedged=True)
Givens = frozenset[Fraction]


def _unbold(text: str) -> str:
    return text.replace("**", "").replace("__", "")


@lru_cache(maxsize=256)
def _givens(question: str) -> Givens:
    """The values a question states (its givens), digits and words."""
    text = unwrap_latex(question)
    return frozenset(f.value for f in [*digit_numbers(text), *word_numbers(text)])


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), if any."""
    starts = [m.end() for m in re.finditer(r"\\boxed\s*\{", text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return text[start:]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s.strip()]


def _hedges(sentence: str) -> bool:
    return bool(_HEDGE_RE.search(sentence)) and len({f.value for f in digit_numbers(sentence)}) > 1


def _marker_value(text: str) -> Found | None:
    """What an answer marker announces: its first number, or its equation's or expression's."""
    text = _unbold(text).lstrip(" \t:*\n")
    sentence = re.sub(r"\([^()]*\)", " ", _sentences(text)[0]) if text.strip() else ""
    first, words = NUMBER_RE.search(sentence), WORDS_RE.search(sentence)
    if _hedges(sentence) or (words and (not first or words.start() < first.start())):
        return _HEDGED if _hedges(sentence) else word_numbers(sentence)[0]
    after = sentence[first.start() :] if first else ""
    if "=" in after and ", " not in after.split("=")[0]:
        return next(iter(digit_numbers(after.rsplit("=", 1)[1])), None)
    expression = _EXPRESSION_RE.match(after.lstrip("$"))
    value = math_verify_value(expression[0], latex=False) if expression else None
    return value or (from_match(first) if first else None)


def _post_marker_value(text: str, marker: re.Match[str], givens: Givens) -> Found | None:
    """What "48 grams is the answer" or "... $240. This is the answer." points back to."""
    before = _unbold(text[max(0, marker.start() - _MARKER_REACH) : marker.start()])
    near = re.search(r"(\S+(?:\s+[^\W\d]+){0,2})\s*$", before)
    if found := digit_numbers(near[1]) if near else []:
        return found[-1]
    statements = _sentences(before)
    pointing = re.search(r"\b(?:this|that)\W*\w*\s*$", before, re.I) and len(statements) > 1
    return _clause_value(statements[-2], givens) if pointing else None


def _explicit(raw: str, givens: Givens) -> Found | None:
    """The answer the reply marks: boxed, ``####``, an answer marker, or bold."""
    boxed = _boxed(raw)
    if boxed is not None:
        latex = math_verify_value(boxed, latex=True) if re.search(r"[\\{]", boxed) else None
        if found := latex or _clause_value(unwrap_latex(boxed), givens):
            return found
    text = unwrap_latex(raw)
    hashes = [f[0] for line in re.findall(r"####\s*(.+)", text) if (f := digit_numbers(line))]
    if hashes:
        return hashes[-1] if len({f.value for f in hashes}) == 1 else _HEDGED
    markers = [(m, True) for m in _MARKER_RE.finditer(text)]
    markers += [(m, False) for m in _POST_MARKER_RE.finditer(text)]
    markers = sorted(markers, key=lambda item: item[0].start(), reverse=True)[:_MAX_MARKERS]
    for marker, ahead in markers:
        at = text[marker.end() : marker.end() + _MARKER_REACH]
        if found := _marker_value(at) if ahead else _post_marker_value(text, marker, givens):
            return found
    for span in reversed([a or b for a, b in _BOLD_RE.findall(text)]):
        if not _LABEL_RE.search(span) and digit_numbers(span):
            return _clause_value(span, givens)
    return None


def _clause_value(clause: str, givens: Givens) -> Found | None:
    """The result of the clause's equation unless a new number follows it, else the clause's
    last number that is not a given, else its last."""
    found = any_numbers(clause)
    result = any_numbers(clause.rsplit("=", 1)[1]) if "=" in clause else []
    if result and all(f.value in givens for f in result[1:]):
        return result[0]
    fresh = [f for f in found if f.value not in givens]
    return (fresh or found)[-1] if found else None


def _main_clause(sentence: str, givens: Givens) -> str:
    """``sentence`` from its last ", so", without parentheses or a restating tail."""
    bare = re.sub(r"\([^()]*\)", " ", sentence)
    sentence = bare if any_numbers(bare) else sentence
    conclusion = list(_SO_RE.finditer(sentence))
    if conclusion and any_numbers(sentence[conclusion[-1].end() :]):
        sentence = sentence[conclusion[-1].end() :]
    colon = re.search(r":\s", sentence)
    if colon and _CONCLUSION_RE.search(stated := sentence[: colon.start()]):
        sentence = stated if any(f.value not in givens for f in any_numbers(stated)) else sentence
    for cut in _RESTATE_RE.finditer(sentence):
        head = [f.value in givens for f in any_numbers(_RATIO_RE.sub(" ", sentence[: cut.start()]))]
        tail = [f.value in givens for f in any_numbers(sentence[cut.end() :])]
        if head and not (all(head) and not all(tail)):
            return sentence[: cut.start()]
    return sentence


def _aside(sentence: str) -> bool:
    """Whether a sentence restates or comments (no equation, no conclusion) or is in parens."""
    if sentence.startswith("(") or _POST_MARKER_RE.search(sentence):
        return True
    plain = not (_OPERATOR_RE.search(sentence) or _CONCLUSION_RE.search(sentence))
    return plain and bool(_ASIDE_RE.match(sentence))


def _statements(sentences: list[str], givens: Givens) -> list[str]:
    """The number-bearing statements before the reply's tail, without asides."""
    kept: list[str] = []
    stated = False  # whether a kept sentence holds a number that is not a given
    for sentence in sentences:
        if stated and _TAIL_RE.match(sentence):
            break
        if not (stated and _aside(sentence)):
            kept.append(sentence)
            stated = stated or any(f.value not in givens for f in any_numbers(sentence))
    return [s for s in kept if any_numbers(_main_clause(s, givens))]


def _restates(sentence: str, earlier: list[str], givens: Givens) -> bool:
    """Whether ``sentence`` only repeats known numbers (no conclusion, no equation)."""
    if _CONCLUSION_RE.search(sentence) or _OPERATOR_RE.search(sentence):
        return False
    known = set(givens) | {f.value for s in earlier for f in any_numbers(s)}
    return all(f.value in known for f in any_numbers(sentence))


def _states_nothing(statements: list[str], givens: Givens, code: bool) -> bool:
    """Whether statements that compute and conclude nothing only repeat the question's numbers
    or only introduce code."""
    if any(_OPERATOR_RE.search(s) or _CONCLUSION_RE.search(s) for s in statements):
        return False
    return code or all(f.value in givens for s in statements for f in any_numbers(s))


def _bare_amount(sentence: str) -> Found | None:
    """The number of a sentence that is only an amount (a number and at most three words)."""
    sentence = sentence.strip(" *#>-")
    match = NUMBER_RE.match(sentence)
    if match is None or re.search(r"\d", rest := sentence[match.end() :]):
        return None
    return from_match(match) if len(rest.split()) <= 3 else None


def _conditional_hedge(sentences: list[str], givens: Givens) -> bool:
    """Whether the reply gives different answers under different conditions ("If ...")."""
    conditions = [_main_clause(s, givens) for s in sentences if _CONDITION_RE.match(s)]
    answers = {f.value for c in conditions if (f := _clause_value(c, givens)) is not None}
    return len(answers) > 1


def _concluded(text: str, givens: Givens) -> Found | None:
    """The answer of a reply without explicit marks (the module docstring's step 3)."""
    code, text = _CODE_RE.search(text), _unbold(_CODE_RE.sub(" ", text)).strip()
    if len(text) >= _CUT_OFF_CHARS and (text[-1].isalnum() or text[-1] in ",;(=+-−×/"):
        return None
    if NUMBER_RE.search(text):  # a lone "one" among digits is a word ("one of", "at least one")
        text = _LONE_ONE_RE.sub("a", text)
    sentences = [s for s in _sentences(text) if not s.endswith("?")]
    statements = _statements(sentences, givens)
    if not statements or _conditional_hedge(sentences, givens):
        return _HEDGED if statements else None
    if _states_nothing(statements, givens, bool(code)):
        return None
    if statements[0] == sentences[0] and (lead := _bare_amount(statements[0])):
        return lead
    while len(statements) > 1 and _restates(statements[-1], statements[:-1], givens):
        statements.pop()
    if _hedges(statements[-1]):
        return _HEDGED
    return _clause_value(_main_clause(statements[-1], givens), givens)


def _after_correction(text: str) -> str:
    """The text after the last correction cue that is followed by a number."""
    last = max((m.start() for r in (NUMBER_RE, WORDS_RE) for m in r.finditer(text)), default=-1)
    cues = [cue for cue in _CORRECTION_RE.finditer(text) if cue.end() <= last]
    return text[cues[-1].end() :] if cues else text


def _find(reply: str, question: str = "") -> Found | None:
    givens = _givens(question)
    raw = _after_correction(reply)
    found = _explicit(raw, givens) or _concluded(unwrap_latex(raw), givens)
    return None if found is None or found.hedged else found


def extract_answer(reply: str, question: str = "") -> Fraction | None:
    """The number ``reply`` commits to as its answer (a percentage as its number: ``"25%"`` ->
    25), or ``None``. ``question``, optional, gives the givens: numbers a reply may repeat."""
    found = _find(reply, question)
    return None if found is None else found.value


def is_answer_attempt(reply: str) -> bool:
    """Whether ``reply`` claims an answer (and is not only a clarifying question).

    An attempt has an answer marker, or a number outside its questions; a number written in
    words ("one", "twelve") counts only when the reply does not end with a question, since
    clarifying questions often say "one".
    """
    text = _unbold(unwrap_latex(reply)).strip()
    if not text:
        return False
    if _explicit(reply, frozenset()) is not None:
        return True
    statements = " ".join(s for s in _sentences(text) if not s.endswith("?"))
    words = bool(word_numbers(statements)) and not text.endswith("?")
    return bool(digit_numbers(statements)) or words


def _equal(answer: Found, expected: Fraction, rel_tol: float) -> bool:
    """math-verify's verdict on a value it read; else exact equality, where answers written as
    decimals may miss by ``rel_tol`` (relative)."""
    if answer.expr is not None:
        from math_verify import verify
        from sympy import Rational

        gold = Rational(expected.numerator, expected.denominator)
        return bool(verify(gold, answer.expr, timeout_seconds=None))
    tolerance = 0 if answer.exact else rel_tol * max(Fraction(1), abs(expected))
    candidates = [answer.value, answer.value / 100] if answer.percent else [answer.value]
    candidates += [-c for c in candidates] if answer.either_sign else []
    return any(abs(c - expected) <= tolerance for c in candidates)


class MathScorer:
    """Scores GSM8k-style replies: reward 1.0 iff the reply's answer equals the reference.

    Args:
        rel_tol: Relative tolerance for answers written as decimals (exact values compare
            exactly up to this tolerance too; the default only absorbs rounding noise).
    """

    name = "gsm8k"

    def __init__(self, rel_tol: float = 1e-6) -> None:
        if not 0 <= rel_tol < 0.01:
            raise ValueError(f"rel_tol must be in [0, 0.01), got {rel_tol}")
        self.rel_tol = rel_tol

    def score(self, reply: str, intent: Intent) -> Score:
        """Score one reply against ``intent.reference["answer"]`` (the instruction's numbers
        are the givens)."""
        expected = self._expected(intent)
        if not isinstance(reply, str):
            raise TypeError(f"reply must be a str, got {type(reply).__name__}")
        if not is_answer_attempt(reply):
            return Score(attempted=False, solved=False, reward=0.0, detail="no answer given")
        found = _find(reply, intent.instruction)
        if found is not None and _equal(found, expected, self.rel_tol):
            return Score(True, True, 1.0, detail=f"correct: {show_number(expected)}")
        got = "nothing" if found is None else show_number(found.value)
        return Score(True, False, 0.0, detail=f"expected {show_number(expected)}, got {got}")

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        """Score ``replies[i]`` against ``intents[i]``."""
        if len(replies) != len(intents):
            raise ValueError(f"{len(replies)} replies for {len(intents)} intents")
        return [self.score(r, i) for r, i in zip(replies, intents, strict=True)]

    def close(self) -> None:
        """Nothing to release: the math check runs in-process."""

    @staticmethod
    def _expected(intent: Intent) -> Fraction:
        if "answer" not in intent.reference:
            raise DataError(f"intent {intent.intent_id!r} has no reference answer")
        return parse_number(str(intent.reference["answer"]))
