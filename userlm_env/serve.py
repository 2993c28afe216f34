"""Serve a userlm-env environment over OpenEnv's HTTP and WebSocket API.

Each WebSocket session (ws://HOST:PORT/ws) plays episodes of its own; the simulator calls of
all sessions are batched together. Act with {"reply": str} (the assistant's reply); observe
{"user_turn": str, "info": {...}} with reward and done; reset with seed, intent_id and
episode_id. Clients: OpenEnv's GenericEnvClient, or UserLMEnvClient from
userlm_env.integrations.openenv.

Example:

    python -m userlm_env.serve --env GSMSymbolic-v0 --simulator sharded --port 8000 \\
        --env-kwargs '{"max_replies": 6}'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from userlm_env.errors import UserLMEnvError

__all__ = ["build_parser", "main"]

PROG = "python -m userlm_env.serve"
_ID_PREFIX = "userlm_env/"


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {value}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a duration >= 0 in seconds."""
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m userlm_env.serve``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--env",
        required=True,
        help="env id, e.g. GSMSymbolic-v0 or userlm_env/GSMSymbolic-v0 "
        "(also GSM8k-v0, HumanEval-v0, Mixed-v0)",
    )
    parser.add_argument(
        "--simulator",
        default="userlm",
        help="simulator name (default: userlm, the UserLM-8b model; sharded: the instant "
        "rule-based user)",
    )
    parser.add_argument(
        "--simulator-kwargs", default="{}", help="JSON object of simulator arguments"
    )
    parser.add_argument(
        "--env-kwargs",
        default="{}",
        help='JSON object of env settings, e.g. {"max_replies": 6, "sources": [...]}',
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port to bind (default: 8000)")
    parser.add_argument(
        "--max-sessions",
        type=_positive,
        default=64,
        help="most WebSocket sessions open at once (default: 64)",
    )
    parser.add_argument(
        "--window-s",
        type=_seconds,
        default=0.02,
        help="longest a request waits for others to join its simulator batch (default: 0.02)",
    )
    parser.add_argument(
        "--max-batch",
        type=_positive,
        default=64,
        help="most conversations in one simulator call (default: 64)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: info)",
    )
    return parser


def _json_object(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, else a ``ValueError`` naming ``flag``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


def _env_id(name: str) -> str:
    """The registered id ``name`` means (the ``userlm_env/`` prefix may be left out)."""
    from userlm_env.env import env_settings

    env_id = name if "/" in name else _ID_PREFIX + name
    env_settings(env_id)  # raises UnknownNameError naming the known ids
    return env_id


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, build the app and serve it until interrupted; 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        env_id = _env_id(args.env)
        simulator_kwargs = _json_object(args.simulator_kwargs, "--simulator-kwargs")
        env_kwargs = _json_object(args.env_kwargs, "--env-kwargs")
        if "simulator_kwargs" in env_kwargs:
            raise ValueError("give simulator arguments with --simulator-kwargs, not --env-kwargs")
        from userlm_env.integrations.openenv import make_app

        app = make_app(
            env_id,
            args.simulator,
            simulator_kwargs=simulator_kwargs,
            max_sessions=args.max_sessions,
            window_s=args.window_s,
            max_batch=args.max_batch,
            **env_kwargs,
        )
    except (UserLMEnvError, ValueError, TypeError, KeyError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    print(
        f"{PROG}: serving {env_id} (simulator {args.simulator}) on ws://{args.host}:{args.port}/ws",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
