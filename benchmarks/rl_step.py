"""Benchmark: the share of a GRPO step spent in the env (the simulated user and the reward).

Claim: with the rule-based user the env is a negligible part of a GRPO step (well under 1%:
the step is the policy's generation and GRPO's update); with the embedded 135M UserLM running
in the trainer's process the simulated user takes most of the step (over 90% on 2 CPU cores)
and the step is an order of magnitude longer. So a model-backed user, not the trainer, sets the
pace of RL, which is why the GPU recipe of ``experiments/rl_grpo.py`` serves it apart.

Measured (2 shared CPU cores, defaults, three runs): ``env_share_sharded`` 0.0004-0.0006
(about 1.4 ms of a 2.3-3.0 s step, nearly all of it the scorer), ``env_share_userlm`` 0.93-0.94
(32-38 s of a 34-41 s step), ``step_ratio_userlm_vs_sharded`` 13.5-14.9. The UserLM's steps
differ a lot (18-57 s for the same 8 user turns) with its guardrail retries: a turn that breaks
a rule is generated again, up to 16 times. The retries are seeded, so every run does the same
work (8 and 22 generations in the two counted steps, ``tries_per_user_turn_userlm`` 1.875);
what varies between runs is the load on the machine.

Workload (both variants): TRL ``GRPOTrainer`` steps with
:func:`userlm_env.integrations.trl.make_rollout_func` on ``userlm_env/GSMSymbolic-v0`` (its
first ``--num-intents`` intents, :func:`~userlm_env.integrations.trl.intent_dataset`), reward
:func:`~userlm_env.integrations.trl.env_reward`. The policy is the tiny random Llama of
``experiments/rl_grpo.py`` (``random_init=true``: 2 layers, 64 wide, on the embedded SmolLM2
tokenizer, initialised with seed 0), with that script's system prompt and trainer settings
(float32 on the CPU, ``beta=0``, ``max_completion_length = max_replies * (max_new_tokens +
256)``). Each step plays ``--prompts-per-step`` x ``--num-generations`` conversations of at most
``--max-replies`` replies of at most ``--max-new-tokens`` tokens. Both variants build a fresh
policy and trainer with the same seed, so they see the same prompts in the same order and the
same episode seeds; what the policy writes after the first user turn differs with the user.

* ``sharded``: the rule-based user (``experiments/conf/simulator/sharded.yaml``): it reveals
  one shard per turn, no model.
* ``userlm``: the embedded SmolLM2-135M-Instruct driven as a UserLM in this process, built from
  ``experiments/conf/simulator/userlm_embedded.yaml`` as is (``model: smollm2-135m-instruct``,
  temperature 0.6, top-p 0.9, 40-token turns, up to 16 guardrail tries, the user may end).

What is timed, inside real steps: a :class:`~transformers.TrainerCallback` clocks each
optimiser step from ``on_step_begin`` to ``on_step_end`` (the rollout, then GRPO's forward and
backward passes and the optimiser step). Timing proxies (no library code changed) clock the
*env*: the simulator object's ``respond`` calls (the first user turns at reset and every later
turn) and the ``score_many`` calls of the vector env's scorers (``core.scorers``, the reward);
a third clock covers the whole rollout call (policy generation plus env). The first
``--warmup-steps`` steps (default 1: torch's first passes, the optimiser's state, the scorer's
first build) are played but not counted; the UserLM's model is loaded and warmed up with one
``respond`` call before training, outside every clock.

Reported per variant: seconds per step, env seconds per step (simulator + scorer, and each),
rollout seconds per step, ``env_share`` = env seconds / step seconds, user turns per step and
generations per user turn (the turns' ``metadata["tries"]``; 1 for the rule-based user). Shard
matching, reply labels and the per-episode ``info`` are env work outside both proxies; they are
string work on a few short texts. ``OMP_WAIT_POLICY=PASSIVE`` is set (unless given) before
torch starts, as in the other benchmarks: spinning OpenMP threads made forward passes on this
busy 2-core machine several times slower. The two variants run one after the other, so a
change of load on the machine between them shows in ``step_ratio_userlm_vs_sharded``.

Run: ``python benchmarks/rl_step.py [--steps 2] [--warmup-steps 1] [--max-new-tokens 32]
[--max-replies 2]`` (about 2.5 minutes on 2 CPU cores at the defaults). The last line printed
is a JSON object: for each variant ``<v>`` (``sharded``, ``userlm``), ``env_share_<v>``,
``step_s_<v>``, ``env_s_per_step_<v>``, ``simulator_s_per_step_<v>``,
``scorer_s_per_step_<v>``, ``rollout_s_per_step_<v>``, ``user_turns_per_step_<v>`` and
``tries_per_user_turn_<v>``; ``step_ratio_userlm_vs_sharded`` (userlm step seconds / sharded
step seconds, the baseline); and the workload's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is TRL-experimental
# Before torch starts OpenMP: spinning worker threads on a busy 2-core machine made forward
# passes several times slower and erratic (see benchmarks/simulator_throughput.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import TrainerCallback
from trl import GRPOConfig

import userlm_env  # noqa: F401  (registers the env ids)
from experiments.rl_grpo import USER_TURN_TOKENS, GRPORunConfig, load_policy, train_grpo
from userlm_env.integrations.trl import (
    ConversationRollout,
    intent_dataset,
    make_rollout_func,
)
from userlm_env.protocols import Scorer, Simulator
from userlm_env.types import ConversationState, Intent, Score, UserTurn

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "userlm_env/GSMSymbolic-v0"
SIMULATOR_CONFIGS = {
    "sharded": ROOT / "experiments" / "conf" / "simulator" / "sharded.yaml",
    "userlm": ROOT / "experiments" / "conf" / "simulator" / "userlm_embedded.yaml",
}
VARIANTS = tuple(SIMULATOR_CONFIGS)
SEED = 0
#: What the clock totals per step: seconds in each timed call, and the simulator's counts.
PARTS = ("simulator", "scorer", "rollout", "user_turns", "tries")


# --- clocks -------------------------------------------------------------------------------------


@dataclass
class Clock:
    """Running totals of the timed calls: seconds by part (``simulator``, ``scorer``,
    ``rollout``) and the simulator's counts (``user_turns``, ``tries``)."""

    totals: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, amount: float) -> None:
        self.totals[part] = self.totals.get(part, 0.0) + amount

    def snapshot(self) -> dict[str, float]:
        return dict(self.totals)


class TimedSimulator:
    """A simulator that clocks the ``respond`` calls of ``inner`` (the env's user) and counts
    the turns it returns and the generations they took (``metadata["tries"]``, 1 for a user
    that reports none)."""

    def __init__(self, inner: Simulator, clock: Clock) -> None:
        self.inner, self.clock = inner, clock

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        start = time.perf_counter()
        try:
            turns = self.inner.respond(states)
        finally:
            self.clock.add("simulator", time.perf_counter() - start)
        self.clock.add("user_turns", len(turns))
        self.clock.add("tries", sum(int(turn.metadata.get("tries", 1)) for turn in turns))
        return turns


class TimedScorer:
    """A scorer that clocks the ``score_many`` calls of ``inner`` (the env's reward)."""

    def __init__(self, inner: Scorer, clock: Clock) -> None:
        self.inner, self.clock = inner, clock
        self.name = inner.name

    def score(self, reply: str, intent: Intent) -> Score:
        return self.score_many([reply], [intent])[0]

    def score_many(self, replies: Sequence[str], intents: Sequence[Intent]) -> list[Score]:
        start = time.perf_counter()
        try:
            return self.inner.score_many(replies, intents)
        finally:
            self.clock.add("scorer", time.perf_counter() - start)

    def close(self) -> None:
        self.inner.close()


class TimedRollout:
    """The ``rollout_func``: ``rollout`` clocked whole, its vector env's scorers clocked too.

    The vector env is built (once per slice size) before the first call, and each task's scorer
    is wrapped in a :class:`TimedScorer` in ``core.scorers``, where the core looks it up.
    """

    def __init__(self, rollout: ConversationRollout, clock: Clock) -> None:
        self.rollout, self.clock = rollout, clock
        self.tasks = sorted({intent.task for intent in rollout.settings["intents"]})

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        core = self.rollout.vector_env(len(prompts)).core
        for task in self.tasks:
            scorer = core.scorer(task)
            if not isinstance(scorer, TimedScorer):
                core.scorers[task] = TimedScorer(scorer, self.clock)
        start = time.perf_counter()
        try:
            return self.rollout(prompts, trainer)
        finally:
            self.clock.add("rollout", time.perf_counter() - start)

    def close(self) -> None:
        """Close the clocked rollout's envs."""
        self.rollout.close()


class StepClock(TrainerCallback):
    """Clocks each optimiser step and the env's share of it; prints one line per step."""

    def __init__(self, name: str, clock: Clock, warmup_steps: int) -> None:
        self.name, self.clock, self.warmup_steps = name, clock, warmup_steps
        self.steps: list[dict[str, float]] = []  # the counted steps
        self._start = 0.0
        self._parts: dict[str, float] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._parts = self.clock.snapshot()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        seconds = time.perf_counter() - self._start
        now = self.clock.snapshot()
        parts = {part: now.get(part, 0.0) - self._parts.get(part, 0.0) for part in PARTS}
        counted = state.global_step > self.warmup_steps
        if counted:
            self.steps.append({"step": seconds, **parts})
        print(
            f"{self.name:>7} step {state.global_step}{'' if counted else ' (warm-up)'}: "
            f"{seconds:6.2f} s, rollout {parts['rollout']:6.2f} s, simulator "
            f"{parts['simulator']:6.3f} s ({parts['user_turns']:.0f} user turns, "
            f"{parts['tries']:.0f} tries), scorer {parts['scorer']:6.4f} s",
            flush=True,
        )


# --- one variant --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The settings both variants share."""

    steps: int
    warmup_steps: int
    max_new_tokens: int
    max_replies: int
    prompts_per_step: int
    num_generations: int
    num_intents: int


def build_simulator(name: str) -> Simulator:
    """The variant's simulator, built from its ``experiments/conf/simulator`` file as is."""
    simulator: Simulator = instantiate(OmegaConf.load(SIMULATOR_CONFIGS[name]))
    return simulator


def warm_up(simulator: Simulator, intents: Sequence[Intent]) -> None:
    """One ``respond`` on two fresh conversations: loads a model-backed user's weights and runs
    its first passes outside the clocks."""
    simulator.respond([ConversationState(intent, seed=i) for i, intent in enumerate(intents[:2])])


def run_variant(name: str, work: Workload, output_dir: Path) -> dict[str, float]:
    """Train ``warmup_steps + steps`` GRPO steps against the variant's user; the per-step
    figures of the counted steps."""
    clock = Clock()
    cfg = GRPORunConfig(
        env_id=ENV_ID,
        random_init=True,
        seed=SEED,
        max_new_tokens=work.max_new_tokens,
        max_replies=work.max_replies,
    )
    dataset = intent_dataset(ENV_ID, max_replies=work.max_replies)
    dataset = dataset.select(range(min(work.num_intents, len(dataset))))
    simulator = build_simulator(name)
    rollout = make_rollout_func(
        ENV_ID,
        max_new_tokens=work.max_new_tokens,
        system_prompt=cfg.system_prompt,
        simulator=TimedSimulator(simulator, clock),
        max_replies=work.max_replies,
    )
    warm_up(simulator, rollout.settings["intents"])
    model, tokenizer = load_policy(cfg)
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=work.prompts_per_step * work.num_generations,
        num_generations=work.num_generations,
        max_steps=work.warmup_steps + work.steps,
        max_completion_length=work.max_replies * (work.max_new_tokens + USER_TURN_TOKENS),
        learning_rate=cfg.learning_rate,
        temperature=cfg.temperature,
        beta=cfg.beta,
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
    )
    step_clock = StepClock(name, clock, work.warmup_steps)
    train_grpo(model, tokenizer, dataset, TimedRollout(rollout, clock), args, step_clock)
    if len(step_clock.steps) != work.steps:
        raise RuntimeError(f"{name}: {len(step_clock.steps)} steps were counted, not {work.steps}")
    return per_step(step_clock.steps)


def per_step(steps: list[dict[str, float]]) -> dict[str, float]:
    """Means per counted step: seconds of the step, its env (simulator + scorer), each part and
    the rollout; the env's share; user turns per step and generations (tries) per user turn."""
    total = {part: sum(step[part] for step in steps) for part in steps[0]}
    env = total["simulator"] + total["scorer"]
    return {
        "step_s": total["step"] / len(steps),
        "env_s_per_step": env / len(steps),
        "simulator_s_per_step": total["simulator"] / len(steps),
        "scorer_s_per_step": total["scorer"] / len(steps),
        "rollout_s_per_step": total["rollout"] / len(steps),
        "env_share": env / total["step"],
        "user_turns_per_step": total["user_turns"] / len(steps),
        "tries_per_user_turn": total["tries"] / total["user_turns"],
    }


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Workload:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="counted GRPO steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=1, help="uncounted first steps")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per policy reply")
    parser.add_argument("--max-replies", type=int, default=2, help="replies per conversation")
    parser.add_argument("--prompts-per-step", type=int, default=2, help="intents per step")
    parser.add_argument("--num-generations", type=int, default=2, help="GRPO group size")
    parser.add_argument("--num-intents", type=int, default=8, help="train set: first N intents")
    args = parser.parse_args(argv)
    work = Workload(
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        max_new_tokens=args.max_new_tokens,
        max_replies=args.max_replies,
        prompts_per_step=args.prompts_per_step,
        num_generations=args.num_generations,
        num_intents=args.num_intents,
    )
    if work.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {work.warmup_steps}")
    if work.num_generations < 2:
        parser.error(f"--num-generations must be >= 2 (GRPO's group), got {work.num_generations}")
    for flag, value in (
        ("--steps", work.steps),
        ("--max-new-tokens", work.max_new_tokens),
        ("--max-replies", work.max_replies),
        ("--prompts-per-step", work.prompts_per_step),
        ("--num-intents", work.num_intents),
    ):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    return work


def main(argv: Sequence[str] | None = None) -> None:
    work = parse_args(argv)
    print(
        f"torch threads: {torch.get_num_threads()}; {work.steps} counted + "
        f"{work.warmup_steps} warm-up steps of {work.prompts_per_step * work.num_generations} "
        f"conversations, max_replies {work.max_replies}, max_new_tokens {work.max_new_tokens}",
        flush=True,
    )
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rl_step_") as tmp:
        for name in VARIANTS:
            figures[name] = run_variant(name, work, Path(tmp) / name)
    result: dict[str, Any] = {}
    for key in figures["sharded"]:
        result.update({f"{key}_{name}": round(figures[name][key], 6) for name in VARIANTS})
    result["step_ratio_userlm_vs_sharded"] = round(
        figures["userlm"]["step_s"] / figures["sharded"]["step_s"], 3
    )
    result.update(
        steps=work.steps,
        warmup_steps=work.warmup_steps,
        conversations_per_step=work.prompts_per_step * work.num_generations,
        max_replies=work.max_replies,
        max_new_tokens=work.max_new_tokens,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
