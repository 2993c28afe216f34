"""TRL GRPO against the env: whole conversations through ``rollout_func``, and the tool path.

One GRPO run (2 steps, a tiny random Llama on the SmolLM2 tokenizer, the rule-based user) is
shared by the rollout tests: they check the rollout output it captured against the tokenizer,
the env and TRL's logs. Two 1-step runs use a *scripted* policy, a real tiny Llama (its forward
pass trains) whose ``generate`` writes fixed replies: a random policy never solves a problem nor
calls a tool, so without a script no env reward would be non-zero and no tool would run.
"""

from __future__ import annotations

import inspect
import json
import math
import shlex
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
import trl
from hydra import compose, initialize_config_dir
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import get_json_schema
from trl import GRPOConfig, GRPOTrainer

import userlm_env  # noqa: F401  (registers the env ids)
from experiments.rl_grpo import TINY_POLICY
from experiments.rl_grpo import run as run_rl_grpo
from simulators.sharded import ShardedSimulator
from tests.conftest import REPO_ROOT
from userlm_env.env import load_env_intents
from userlm_env.errors import UnknownNameError
from userlm_env.integrations.trl import (
    INTENT_PROMPT_PREFIX,
    RolloutPromptError,
    UserToolEnvironment,
    env_reward,
    intent_dataset,
    intent_id_of,
    make_environment_factory,
    make_rollout_func,
    tool_dataset,
)
from userlm_env.models import EMBEDDED_MODEL, load_tokenizer
from userlm_env.types import ConversationState, UserTurn

ENV_ID = "userlm_env/GSMSymbolic-v0"
SOURCES = [{"name": "gsm_symbolic", "n": 2, "seed": 0}]
SETTINGS: dict[str, Any] = {"simulator": "sharded", "sources": SOURCES, "max_replies": 2}
SYSTEM = "Solve the user's math problem."
MAX_NEW_TOKENS = 6
Rollout = tuple[list[Any], dict[str, list[Any]]]

# TRL warns that rollout_func and environment_factory are experimental: they are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:You are using:UserWarning")


def _grpo_args(output_dir: Path, **overrides: Any) -> GRPOConfig:
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_steps": 2,
        "max_completion_length": 128,
        "learning_rate": 1e-2,
        "bf16": False,
        "use_cpu": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }
    return GRPOConfig(**{**settings, **overrides})


def _tiny_llama(tokenizer: Any, cls: type[LlamaForCausalLM] = LlamaForCausalLM) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(LlamaConfig(vocab_size=len(tokenizer), **TINY_POLICY))


def text_noise(completions: list[Any], **_: Any) -> list[float | None]:
    """Test-only reward that differs between samples, so GRPO advantages are not all zero."""
    return [zlib.crc32(str(c).encode()) % 1000 / 1000 for c in completions]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def grpo_run(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Rollout]]:
    """Two GRPO steps; the trainer and every (prompts, rollout output) it produced."""
    rollout = make_rollout_func(
        ENV_ID, max_new_tokens=MAX_NEW_TOKENS, system_prompt=SYSTEM, **SETTINGS
    )
    captured: list[Rollout] = []

    def capturing(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        output = rollout(prompts, trainer)
        captured.append((prompts, output))
        return output

    trainer = GRPOTrainer(
        model=_tiny_llama(tokenizer),
        processing_class=tokenizer,
        reward_funcs=[env_reward, text_noise],
        args=_grpo_args(tmp_path_factory.mktemp("grpo")),
        train_dataset=intent_dataset(ENV_ID, **SETTINGS),
        rollout_func=capturing,
    )
    trainer.train()
    rollout.close()
    return trainer, captured


def _step_logs(trainer: Any) -> list[dict[str, Any]]:
    return [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]


def _runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of each run of equal values in ``mask``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for index in range(1, len(mask) + 1):
        if index == len(mask) or mask[index] != mask[start]:
            runs.append((mask[start], start, index))
            start = index
    return runs


# ------------------------------------------------------------------------------ datasets
def test_intent_dataset_has_one_placeholder_row_per_intent() -> None:
    dataset = intent_dataset(ENV_ID, **SETTINGS)
    intents = load_env_intents(SOURCES)
    assert dataset["intent_id"] == [intent.intent_id for intent in intents]
    for row in dataset:
        assert row["prompt"] == [
            {"role": "user", "content": f"{INTENT_PROMPT_PREFIX}{row['intent_id']}"}
        ]
        assert intent_id_of(row["prompt"]) == row["intent_id"]


def test_bad_settings_and_foreign_prompts_are_refused() -> None:
    with pytest.raises(TypeError, match="max_turns"):
        intent_dataset(ENV_ID, max_turns=2)
    with pytest.raises(UnknownNameError, match="unknown env id"):
        intent_dataset("userlm_env/Nope-v0")
    with pytest.raises(RolloutPromptError, match="intent_dataset"):
        intent_id_of([{"role": "user", "content": "What is 2 + 2?"}])


# ------------------------------------------------------------------------------ rollout
@pytest.mark.slow
def test_grpo_trainer_finishes_with_whole_conversations(
    grpo_run: tuple[Any, list[Rollout]],
) -> None:
    trainer, captured = grpo_run
    assert trainer.state.global_step == 2
    assert len(captured) == 2  # one rollout per step
    for prompts, output in captured:
        assert len(output["prompt_ids"]) == len(prompts) == 4
        assert all(len(m) == 4 for m in output["messages"])  # 2 user turns, 2 replies
        assert set(output["termination_reason"]) == {"max_replies"}


@pytest.mark.slow
def test_env_mask_covers_exactly_the_policys_tokens(
    grpo_run: tuple[Any, list[Rollout]], tokenizer: Any
) -> None:
    _, captured = grpo_run
    for _, output in captured:
        for row in range(len(output["prompt_ids"])):
            messages = output["messages"][row]
            replies = [m["content"] for m in messages if m["role"] == "assistant"]
            user_turns = [m["content"] for m in messages if m["role"] == "user"]
            assert tokenizer.decode(output["prompt_ids"][row]) == (
                f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{user_turns[0]}<|im_end|>\n<|im_start|>assistant\n"
            )
            ids, mask = output["completion_ids"][row], output["env_mask"][row]
            logprobs = output["logprobs"][row]
            assert len(ids) == len(mask) == len(logprobs)
            runs = _runs(mask)
            assert [value for value, _, _ in runs] == [1, 0, 1]  # reply, user turn, reply
            policy_runs = [(s, e) for v, s, e in runs if v == 1]
            for (start, end), reply in zip(policy_runs, replies, strict=True):
                assert 1 <= end - start <= MAX_NEW_TOKENS
                assert tokenizer.decode(ids[start:end], skip_special_tokens=True) == reply
                assert all(math.isfinite(lp) and lp < 0 for lp in logprobs[start:end])
            _, start, end = runs[1]
            closed = ids[start - 1] == tokenizer.eos_token_id
            expected = (
                "" if closed else "<|im_end|>"
            ) + f"\n<|im_start|>user\n{user_turns[1]}<|im_end|>\n<|im_start|>assistant\n"
            assert tokenizer.decode(ids[start:end]) == expected
            assert logprobs[start:end] == [0.0] * (end - start)


@pytest.mark.slow
def test_logged_completion_lengths_count_only_policy_tokens(
    grpo_run: tuple[Any, list[Rollout]],
) -> None:
    trainer, captured = grpo_run
    logs = _step_logs(trainer)
    assert len(logs) == len(captured)
    for entry, (_, output) in zip(logs, captured, strict=True):
        policy = [sum(mask) for mask in output["env_mask"]]
        everything = [len(ids) for ids in output["completion_ids"]]
        assert entry["completions/mean_length"] == pytest.approx(sum(policy) / len(policy))
        assert entry["completions/min_length"] == min(policy)
        assert entry["completions/max_length"] == max(policy)
        assert sum(policy) < sum(everything)  # user turns were left out of the count


@pytest.mark.slow
def test_rewards_are_the_envs_and_groups_share_the_episode_seed(
    grpo_run: tuple[Any, list[Rollout]],
) -> None:
    trainer, captured = grpo_run
    env = gym.make(ENV_ID, **SETTINGS)
    seeds_by_round = []
    for entry, (prompts, output) in zip(_step_logs(trainer), captured, strict=True):
        rewards = output["env_reward"]
        assert entry["rewards/env_reward/mean"] == pytest.approx(sum(rewards) / len(rewards))
        seeds: dict[str, set[int]] = {}
        for row, prompt in enumerate(prompts):
            intent_id = intent_id_of(prompt)
            seeds.setdefault(intent_id, set()).add(output["episode_seed"][row])
            replay = _replay(env, intent_id, output["episode_seed"][row], output["messages"][row])
            assert replay == {
                "reward": output["env_reward"][row],
                "coverage": output["coverage"][row],
                "termination_reason": output["termination_reason"][row],
                "messages": output["messages"][row],
            }
        assert all(len(group) == 1 for group in seeds.values())  # copies share one seed
        seeds_by_round.append(seeds)
    assert seeds_by_round[0] != seeds_by_round[1]  # each round draws new episodes


def _replay(env: Any, intent_id: str, seed: int, messages: list[dict[str, str]]) -> dict[str, Any]:
    """Play the rollout's replies in a fresh single env; its reward and last info."""
    _, info = env.reset(seed=seed, options={"intent_id": intent_id})
    total = 0.0
    for reply in [m["content"] for m in messages if m["role"] == "assistant"]:
        _, reward, _, _, info = env.step(reply)
        total += reward
    return {
        "reward": total,
        "coverage": info["coverage"],
        "termination_reason": info["termination_reason"],
        "messages": info["messages"],
    }


@pytest.mark.slow
def test_a_secondary_reward_gives_a_nonzero_gradient(grpo_run: tuple[Any, list[Rollout]]) -> None:
    trainer, _ = grpo_run
    assert any(entry["grad_norm"] > 0 for entry in _step_logs(trainer))


# ------------------------------------------------------------------------ scripted policy
class ScriptedPolicy(LlamaForCausalLM):
    """A tiny Llama whose ``generate`` writes ``script(context text)`` for every row; its
    forward pass (what GRPO trains) is the real one. ``contexts`` records what it was shown."""

    tokenizer: Any
    script: Callable[[str], str]
    contexts: list[str]

    def generate(  # type: ignore[override]
        self, input_ids: torch.Tensor, generation_config: Any = None, **_: Any
    ) -> Any:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=False)
        self.contexts.extend(texts)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        rows = [
            [*self.tokenizer.encode(self.script(text), add_special_tokens=False), eos]
            for text in texts
        ]
        width = max(len(row) for row in rows)
        new = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
        if generation_config is None or not generation_config.return_dict_in_generate:
            return sequences
        scores = []
        for position in range(width):
            step = torch.full((len(rows), self.config.vocab_size), float("-inf"))
            scores.append(step.scatter_(1, new[:, position : position + 1], 0.0))
        return GenerateDecoderOnlyOutput(sequences=sequences, scores=tuple(scores))  # type: ignore[arg-type]


def _scripted(tokenizer: Any, script: Callable[[str], str]) -> ScriptedPolicy:
    model = _tiny_llama(tokenizer, ScriptedPolicy)
    model.tokenizer, model.script, model.contexts = tokenizer, script, []
    return model


def _answer_for(text: str) -> str:
    """The reference answer of the intent whose first user turn ``text`` contains."""
    for intent in load_env_intents(SOURCES):
        if intent.shard(1).text in text:
            return str(intent.reference["answer"])
    raise AssertionError(f"no intent's first turn in {text!r}")


class CountingSimulator:
    """The rule-based user, recording how many conversations each call served."""

    def __init__(self) -> None:
        self.user = ShardedSimulator()
        self.batch_sizes: list[int] = []

    def respond(self, states: Sequence[ConversationState]) -> list[UserTurn]:
        self.batch_sizes.append(len(states))
        return self.user.respond(states)


@pytest.mark.slow
def test_solved_conversations_stop_and_earn_the_envs_reward(tokenizer: Any, tmp_path: Path) -> None:
    carpenter, pebbles = load_env_intents(SOURCES)

    def script(context: str) -> str:  # solves the carpenter at once, the pebbles one reply later
        if pebbles.shard(1).text in context and context.count("<|im_start|>assistant") == 1:
            return "What else should I know?"
        return f"The answer is {_answer_for(context)}."

    simulator = CountingSimulator()
    settings = {**SETTINGS, "simulator": simulator}
    rollout = make_rollout_func(ENV_ID, max_new_tokens=16, **settings)
    captured: list[Rollout] = []

    def capturing(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        captured.append((prompts, rollout(prompts, trainer)))
        return captured[-1][1]

    trainer = GRPOTrainer(
        model=_scripted(tokenizer, script),
        processing_class=tokenizer,
        reward_funcs=env_reward,
        args=_grpo_args(tmp_path, max_steps=1),
        train_dataset=intent_dataset(ENV_ID, **settings),
        rollout_func=capturing,
    )
    trainer.train()
    ((prompts, output),) = captured
    assert output["env_reward"] == [1.0] * 4
    assert set(output["termination_reason"]) == {"solved"}
    assert _step_logs(trainer)[0]["rewards/env_reward/mean"] == 1.0
    # One simulator call per turn: the 4 first turns, then the 2 unsolved conversations only.
    assert simulator.batch_sizes == [4, 2]
    for row, prompt in enumerate(prompts):
        replies = [m["content"] for m in output["messages"][row] if m["role"] == "assistant"]
        runs = [value for value, _, _ in _runs(output["env_mask"][row])]
        if intent_id_of(prompt) == carpenter.intent_id:
            assert replies == [f"The answer is {carpenter.reference['answer']}."]
            assert runs == [1]
        else:
            assert replies == [
                "What else should I know?",
                f"The answer is {pebbles.reference['answer']}.",
            ]
            assert runs == [1, 0, 1]


# ------------------------------------------------------------------------- tool path
def test_tool_environment_plays_an_episode_through_its_methods() -> None:
    factory = make_environment_factory(ENV_ID, num_generations=2, **SETTINGS)
    intent = load_env_intents(SOURCES)[1]
    first, copy, later = factory(), factory(), factory()
    row: dict[str, Any] = {"prompt": [], "intent_id": intent.intent_id}
    assert first.reset(**row) == intent.shard(1).text
    copy.reset(**row)
    later.reset(**row)
    assert first.info["intent_id"] == intent.intent_id
    assert first.episode_seed == copy.episode_seed != later.episode_seed
    assert first.reply_to_user("What else should I know?") == intent.shard(2).text
    note = first.reply_to_user(f"The answer is {intent.reference['answer']}.")
    assert note.startswith("The conversation is over (solved)")
    assert first.get_reward() == 1.0
    assert first.reply_to_user("Anything else?") == note  # nothing more is played
    assert first.info["replies"] == 2
    public = {
        name
        for name, _ in inspect.getmembers(UserToolEnvironment, predicate=inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == {"reset", "reply_to_user", "get_reward"}  # TRL makes tools of the others
    schema = get_json_schema(first.reply_to_user)["function"]
    assert schema["name"] == "reply_to_user"
    assert schema["parameters"]["required"] == ["message"]
    factory.close()


def _tool_call(message: str) -> str:
    call = json.dumps({"name": "reply_to_user", "arguments": {"message": message}})
    return f"<tool_call>\n{call}\n</tool_call>"


@pytest.mark.slow
def test_trls_tool_loop_drives_the_user_through_reply_to_user(tmp_path: Path) -> None:
    tool_tokenizer = load_tokenizer(EMBEDDED_MODEL)  # a copy: its chat template changes
    template = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
    tool_tokenizer.chat_template = template.read_text(encoding="utf-8")

    def script(context: str) -> str:  # two tool calls (a question, the answer), then stop
        calls = context.count("<tool_response>")
        if calls == 0:
            return _tool_call("What else should I know?")
        if calls == 1:
            return _tool_call(f"The answer is {_answer_for(context)}.")
        return "Done."

    factory = make_environment_factory(ENV_ID, num_generations=2, **SETTINGS)
    model = _scripted(tool_tokenizer, script)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tool_tokenizer,
        args=_grpo_args(tmp_path, max_steps=1, per_device_train_batch_size=2),
        train_dataset=tool_dataset(ENV_ID, **SETTINGS),
        environment_factory=factory,
    )
    trainer.train()
    log = _step_logs(trainer)[0]
    assert log["tools/call_frequency"] == 2.0 and log["tools/failure_frequency"] == 0.0
    assert log["rewards/UserToolEnvironment/mean"] == 1.0
    assert len(factory.environments) == 2
    for environment in factory.environments:
        assert environment.get_reward() == 1.0
        assert environment.info["termination_reason"] == "solved"
        second_user_turn = environment.info["messages"][2]["content"]
        assert any(f"<tool_response>\n{second_user_turn}" in c for c in model.contexts)
    factory.close()


# ------------------------------------------------------------------------ experiment
@pytest.mark.slow
def test_rl_grpo_runs_one_step_with_a_tiny_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["random_init=true", "steps=1", "max_new_tokens=4", "save_model=false"]
    with initialize_config_dir(
        config_dir=str(REPO_ROOT / "experiments" / "conf"), version_base="1.3"
    ):
        cfg = compose(config_name="rl_grpo", overrides=overrides)
    records = run_rl_grpo(cfg, tmp_path)
    assert [r["step"] for r in records] == [1.0]
    assert records[0]["policy_tokens"] == 2 * 4  # max_replies replies of max_new_tokens tokens
    out = capsys.readouterr().out
    assert "step 1/1  reward 0.000  env reward 0.000" in out
    assert "rl_grpo: 1 GRPO steps on userlm_env/GSMSymbolic-v0" in out


@pytest.mark.slow
def test_the_readme_rl_grpo_commands_run_as_written(tmp_path: Path) -> None:
    """Both ``experiments.rl_grpo`` commands of the README, run as written (the default one
    trains the embedded SmolLM2-135M for 2 steps on CPU), from a scratch working folder."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        shlex.split(line.split("#", 1)[0])
        for line in readme.splitlines()
        if line.startswith(".venv/bin/python -m experiments.rl_grpo")
    ]
    assert len(commands) == 2
    for argv in commands:
        done = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "GRPO steps on userlm_env/GSMSymbolic-v0" in done.stdout
