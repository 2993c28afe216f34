"""Reading numbers from text: the values a reply or a reference answer writes, and how.

A number may carry ``$``, a sign ("-3", "negative 3"), separators (``1,234``, ``1 234``),
decimals, ``%`` or "percent", a scale ("1.5 million"), be a fraction (``3/4``, ``4 1/2``), be
followed by "below zero" (its sign is then unsure), or be written in words ("one hundred and
five", "one and a half"). LaTeX around numbers (``\\frac{3}{4}``, ``\\text{...}``, ``\\$``) is
unwrapped first. Overlong digit runs are no numbers.

HF's math-verify reads LaTeX boxes and plain expressions (:func:`math_verify_value`). Its
signal-based timeouts fail outside the main thread and would clobber the caller's ``SIGALRM``,
so they are off (and its notice saying so is filtered out); it only gets short spans (120
characters at most) without powers, factorials or roots.

Which of a reply's numbers is its answer is :mod:`userlm_env.tasks.math`'s job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from userlm_env.errors import DataError

__all__ = [
    "NUMBER_RE",
    "WORDS_RE",
    "Found",
    "any_numbers",
    "digit_numbers",
    "from_match",
    "math_verify_value",
    "parse_number",
    "show_number",
    "unwrap_latex",
    "word_numbers",
]

# fmt: off
_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALE = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = "|".join(sorted([*_UNITS, "hundred", *_SCALE], key=len, reverse=True))
_I = re.IGNORECASE
NUMBER_RE = re.compile(  # a number in digits, with its sign, fraction, percent and scale
    r"(?<![\w./:])(?P<sign>[-−–](?=\$?\d)|negative\s+)?\$?\s?(?:(?P<whole>\d+)\s+(?=\d+/\d))?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:[  ]\d{3})+(?![\d-])|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d/]))?(?!:\d)"
    r"(?P<pct>\s?(?:%|percent\b|per cent\b))?(?P<scale>\s+(?:thousand|million|billion)\b)?", _I)
WORDS_RE = re.compile(  # a run of number words, with its sign and "and a half"
    rf"(?<![\w-])(?P<sign>minus\s+|negative\s+)?(?P<words>(?:{_WORD})(?:(?:\s+and)?[\s-]+"
    rf"(?:{_WORD}))*)\b(?P<half>\s+and\s+a\s+half\b)?", _I)
_BELOW_RE = re.compile(  # after a number: "5 degrees below zero", "48 m below the surface"
    r"\s*(?:°\s*[CF]?|[^\W\d]+(?: Celsius| Fahrenheit)?)?\s+below (?:zero|sea level"
    r"|the surface|the water|ground)\b", _I)
_UNSAFE_RE = re.compile(r"\^|\*\*|!|\\(?:sqrt|int|sum|prod|lim)")
_LATEX_SUBS = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r" (\1)/(\2)"),
    (r"\\text(?:bf|rm)?\{([^{}]*)\}", r"\1"), (r"\\(?:times|cdot)", " × "), (r"\\div", " ÷ "),
    (r"\\(?:left|right)|\\[,!;]|\\[()\[\]]|\$\$", " "), (r"\{,\}", ","), (r"\\([$%])", r"\1"),
    (r"\((-?[\d.,]+)\)/\((\d[\d.,]*)\)", r"\1/\2"),
))
# fmt: on
_MAX_SPAN_CHARS = 120  # the longest span handed to math-verify
_MAX_DIGITS = 40  # a longer run of digits is no answer (and too long for int())
logging.getLogger("math_verify.parser").addFilter(  # its timeouts are off on purpose
    lambda r: "Timeout is disabled" not in r.getMessage()
)


@dataclass(frozen=True)
class Found:
    """A number found in a text: its value and how it was written."""

    value: Fraction
    percent: bool = False  # written with %: the reference may be N or N/100
    exact: bool = True  # no decimal point: compares exactly
    expr: Any = None  # the sympy value, when math-verify read it
    hedged: bool = False  # offered among alternatives: the reply commits to none
    either_sign: bool = False  # written "N below zero": +N or -N may be meant


def unwrap_latex(text: str) -> str:
    """Unwrap LaTeX around numbers (``\\frac``, ``\\text``, delimiters); keeps emphasis."""
    for pattern, replacement in _LATEX_SUBS:
        text = pattern.sub(replacement, text)
    return text


def from_match(match: re.Match[str]) -> Found | None:
    """The number a :data:`NUMBER_RE` match writes; ``None`` if overlong or divided by 0."""
    if len(match["num"]) > _MAX_DIGITS or len(match["den"] or "") > _MAX_DIGITS:
        return None
    exact = "." not in match["num"]
    value = Fraction(re.sub(r"[,  ]", "", match["num"]))
    if match["den"]:
        if Fraction(match["den"]) == 0:
            return None
        value = value / Fraction(match["den"]) + int(match["whole"] or 0)
        exact = exact and "." not in match["den"]
    value *= _SCALE[match["scale"].strip().lower()] if match["scale"] else 1
    binary = match.string[: match.start()].rstrip().endswith(tuple("0123456789)%"))
    value = -value if match["sign"] and not binary else value
    below = bool(_BELOW_RE.match(match.string, match.end()))
    return Found(-abs(value) if below else value, bool(match["pct"]), exact, either_sign=below)


def _words_value(words: str) -> int:
    """Value of a run of English number words ("one hundred and five" -> 105)."""
    total, current = 0, 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word in _UNITS:
            current += _UNITS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALE:
            total, current = total + max(current, 1) * _SCALE[word], 0
    return total + current


def digit_numbers(text: str) -> list[Found]:
    """The numbers ``text`` writes in digits, in order."""
    return [f for f in map(from_match, NUMBER_RE.finditer(text)) if f is not None]


def word_numbers(text: str) -> list[Found]:
    """The numbers ``text`` writes in words, in order."""
    found = []
    for match in WORDS_RE.finditer(text):
        value = _words_value(match["words"]) + Fraction(1 if match["half"] else 0, 2)
        found.append(Found(-value if match["sign"] else value))
    return found


def any_numbers(text: str) -> list[Found]:
    """Numbers in digits, else in words."""
    return digit_numbers(text) or word_numbers(text)


def math_verify_value(span: str, latex: bool) -> Found | None:
    """The real number math-verify reads in a LaTeX box or a plain expression, if any."""
    if len(span) > _MAX_SPAN_CHARS or _UNSAFE_RE.search(span):
        return None
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from sympy import Eq

    config = LatexExtractionConfig() if latex else ExprExtractionConfig()
    text = f"$\\boxed{{{span}}}$" if latex else span.replace("×", "*").replace("÷", "/")
    try:
        parsed = parse(text, [config], "no_fallback", parsing_timeout=None)
        value = parsed[0].rhs if isinstance(parsed[0], Eq) else parsed[0].doit()
        if not (value.is_number and value.is_real):
            return None
        exact = bool(value.is_Rational)
        return Found(Fraction(str(value if exact else value.evalf(20))), exact=exact, expr=value)
    except Exception:  # nothing parsed, or sympy failed on odd input
        return None


def parse_number(text: str) -> Fraction:
    """Parse a reference answer such as ``"18"``, ``"1,234"``, ``"-3.5"`` or ``"$12.00"``.

    Raises:
        DataError: ``text`` holds no number.
    """
    found = digit_numbers(unwrap_latex(text))
    if not found:
        raise DataError(f"reference answer {text!r} is not a number")
    return found[-1].value


def show_number(value: Fraction) -> str:
    """``value`` for a score's detail: an integer as is, else six significant digits."""
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.6g}"
