"""A person at the terminal types the user turns (spot checks, collecting real user turns).

:class:`HumanSimulator` (registered as ``"human"``) shows the intent when a conversation starts
(the state has no messages yet) and the assistant's latest reply, then reads one line. Streams
are injectable, so scripts and tests can drive it with :class:`io.StringIO`.

Input rules:

* a non-empty line (other than a command) is the user's turn, sent as typed (outer whitespace
  trimmed);
* an empty line, end of input (EOF, Ctrl-D), ``/end`` or ``/quit`` ends the conversation:
  ``UserTurn(END_MARKER, ended=True)``;
* ``/help`` prints these rules and asks again.

A batch of states is handled one conversation after another. Nothing about a conversation is
kept between calls: the state carries it all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from userlm_env.estimate import CallBudget
from userlm_env.types import END_MARKER, ConversationState, UserTurn

__all__ = ["HELP", "HumanSimulator"]

HELP = """\
Type the user's next message and press Enter.
  (empty line), /end, /quit, or Ctrl-D   end this conversation
  /help                                  show this help"""

_END_COMMANDS = frozenset({"/end", "/quit"})
_RULE = "-" * 72


class HumanSimulator:
    """Reads each user turn from a person.

    Args:
        stdin: Where lines are read from; default ``sys.stdin`` at call time.
        stdout: Where the intent, replies and prompts go; default ``sys.stdout`` at call time.
        prompt: Text shown before each input line.
    """

    def __init__(
        self, stdin: TextIO | None = None, stdout: TextIO | None = None, prompt: str = "you> "
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.prompt = prompt

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        """Ask the person for the next turn of each state, in order."""
        return [self._ask(state, index, len(states)) for index, state in enumerate(states)]

    def call_budget(self) -> CallBudget:
        """No model is called, and a person's turns have no length bound
        (:mod:`userlm_env.estimate`)."""
        return CallBudget.without_model("human")

    def _ask(self, state: ConversationState, index: int, total: int) -> UserTurn:
        self._show(state, index, total)
        while True:
            self._write(self.prompt, end="")
            line = self._input().readline()
            if not line:  # EOF
                self._write("")
                return _ended("eof")
            text = line.strip()
            if text.lower() == "/help":
                self._write(HELP)
                continue
            if not text or text.lower() in _END_COMMANDS:
                return _ended(text or "empty line")
            return UserTurn(text, metadata={"source": "human"})

    def _show(self, state: ConversationState, index: int, total: int) -> None:
        header = f"conversation {index + 1}/{total}: {state.intent.intent_id}" if total > 1 else ""
        if not state.messages:
            self._write(_RULE)
            self._write(header or f"conversation: {state.intent.intent_id}")
            self._write(f"Your goal (as the user):\n{state.intent.instruction}")
            self._write("Reveal it bit by bit, as a real user would. /help for commands.")
            self._write(_RULE)
        elif header:
            self._write(header)
        if state.last_reply is not None:
            self._write(f"assistant> {state.last_reply}")

    def _input(self) -> TextIO:
        return self.stdin if self.stdin is not None else sys.stdin

    def _write(self, text: str, *, end: str = "\n") -> None:
        sink = self.stdout if self.stdout is not None else sys.stdout
        sink.write(text + end)
        sink.flush()


def _ended(how: str) -> UserTurn:
    return UserTurn(END_MARKER, ended=True, metadata={"source": "human", "ended_by": how})
