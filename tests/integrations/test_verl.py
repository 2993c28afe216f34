"""verl adapter: the ``userlm_agent`` loop, run as verl's agent-loop worker runs it.

verl rollouts need vLLM or SGLang servers on GPUs, so the server manager here is a FAKE: it
decodes the prompt tokens it is sent (with the real SmolLM2 tokenizer of the embedded model)
and returns scripted reply tokens, capped at ``max_tokens`` as verl's servers cap them.
Everything else is verl's own: the rows go through its ``RLHFDataset``, ``collate_fn`` and
``DataProto`` as in ``AgentLoopWorker.generate_sequences``; the loop comes from an agent-loop
config file through verl's registry and ``hydra.utils.instantiate``; its Continuous Token
builder renders the turns. The simulator is the rule-based ``sharded`` user.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import pytest
import verl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput,
    DictConfigWrap,
    ToolListWrap,
    _agent_loop_registry,
)
from verl.protocol import DataProto
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
from verl.utils.import_utils import resolve_config_path
from verl.workers.rollout.replica import TokenOutput

from userlm_env.integrations import verl as adapter
from userlm_env.integrations.verl import (
    AGENT_NAME,
    BUDGET_SPENT,
    VerlSettingsError,
    close_verl_pools,
    main,
    verl_rows,
)
from userlm_env.models import EMBEDDED_MODEL, load_tokenizer

from .episodes_helpers import ENV_ID, MAX_REPLIES, STYLES, Episode, gym_episode, policy

SYSTEM = "Be brief."
# What AgentLoopWorker.generate_sequences sends (calculate_log_probs on).
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}
# The loop's config entry, as a user writes it for actor_rollout_ref.rollout.agent
# .agent_loop_config_path. Its simulator is overridden by the rows (written with "sharded").
LOOP_CONFIG = f"""
- name: {AGENT_NAME}
  _target_: userlm_env.integrations.verl.UserLMAgentLoop
  env_id: {ENV_ID}
  simulator: userlm
  env_kwargs:
    max_replies: {MAX_REPLIES}
"""
REGISTERED_AT_IMPORT = dict(_agent_loop_registry[AGENT_NAME])
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_verl_setup() -> tuple[str, list[str]]:
    """The README's verl section as written: its agent-loop file and the trainer's overrides."""
    section = README.read_text(encoding="utf-8").split("### verl\n", 1)[1]
    loop_yaml = re.findall(r"```yaml\n(.*?)```", section, re.S)[0]
    command = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    trainer = command[command.index("python -m verl.trainer.main_ppo") :]
    overrides = [line.strip(" \\") for line in trainer.splitlines()[1:] if line.strip()]
    return loop_yaml, overrides


class ScriptedServer:
    """A fake of verl's ``LLMServerClient``: ``generate`` returns scripted reply tokens.

    It finds the conversation by the first user turn in the prompt and the reply number by the
    assistant headers in it, and records what it returned. Logprobs are made-up numbers,
    distinct per token, so that their alignment can be checked.
    """

    def __init__(self, tokenizer: Any, scripts: dict[str, tuple[str, str]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = scripts  # first user turn -> (style, answer)
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.replies: dict[str, list[list[int]]] = {turn: [] for turn in scripts}
        self.max_tokens: dict[str, list[int]] = {turn: [] for turn in scripts}

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        **_: Any,
    ) -> TokenOutput:
        text = self.tokenizer.decode(prompt_ids)
        first_turn = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        k = text.count("<|im_start|>assistant\n") - 1
        style, answer = self.scripts[first_turn]
        reply = self.tokenizer.encode(policy(style, k, answer), add_special_tokens=False)
        ids = [*reply, self.end_id][: sampling_params["max_tokens"]]
        self.replies[first_turn].append(ids)
        self.max_tokens[first_turn].append(sampling_params["max_tokens"])
        return TokenOutput(token_ids=ids, log_probs=logprob_script(len(ids)))


def logprob_script(n: int) -> list[float]:
    return [-(j + 1) / 100 for j in range(n)]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def answers() -> dict[str, str]:
    env = gym.make(ENV_ID, simulator="sharded")
    return {i.intent_id: i.reference["answer"] for i in env.unwrapped.intents}


@pytest.fixture(autouse=True)
def _loop_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register the loop from a config file, as AgentLoopWorker does with
    ``agent_loop_config_path``; close the shared pools afterwards."""
    path = tmp_path / "agent_loops.yaml"
    path.write_text(LOOP_CONFIG)
    for entry in OmegaConf.load(path):
        monkeypatch.setitem(_agent_loop_registry, entry.name, entry)
    yield
    close_verl_pools()


@pytest.fixture()
def batch_rows(tmp_path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    """Three rows written by the dataset command, read back the way verl's trainer reads them:
    RLHFDataset, collate_fn, DataProto; one kwargs dict per row as the worker passes them."""
    path = tmp_path / "train.parquet"
    args = ["--env-id", ENV_ID, "--rows", "3", "--seed", "11", "--simulator", "sharded"]
    main([*args, "--system-prompt", SYSTEM, "--output", str(path)])
    data_config = OmegaConf.create(
        {
            "cache_dir": str(tmp_path / "cache"),
            "max_prompt_length": 512,
            "filter_overlong_prompts_workers": 1,
        }
    )
    dataset = RLHFDataset(str(path), tokenizer, data_config)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    return [{k: v[i] for k, v in batch.non_tensor_batch.items()} for i in range(len(batch))]


def make_loop(server: ScriptedServer, tokenizer: Any, response_length: int, model_type: str) -> Any:
    """An agent loop instance, built as AgentLoopWorker._run_agent_loop builds one."""
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": 512, "response_length": response_length}
            },
            "data": {},
        }
    )
    return hydra.utils.instantiate(
        config=_agent_loop_registry[AGENT_NAME],
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type=model_type,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )


async def rollout(
    rows: list[dict[str, Any]],
    server: ScriptedServer,
    tokenizer: Any,
    response_length: int,
    model_type: str = "llama",
) -> list[AgentLoopOutput]:
    """Every row's loop at once on one event loop, as the worker runs them."""

    async def one(kwargs: dict[str, Any]) -> AgentLoopOutput:
        kwargs = dict(kwargs)
        assert kwargs.pop("agent_name") == AGENT_NAME
        loop = make_loop(server, tokenizer, response_length, model_type)
        result: AgentLoopOutput = await loop.run(dict(SAMPLING, logprobs=True), **kwargs)
        return result

    return list(await asyncio.gather(*(one(row) for row in rows)))


def scripted(
    rows: list[dict[str, Any]], tokenizer: Any, answers: dict[str, str]
) -> tuple[ScriptedServer, list[Episode]]:
    """The fake server for these rows (row i plays STYLES[i]) and the reference episodes."""
    episodes, scripts = [], {}
    for i, row in enumerate(rows):
        info = row["extra_info"]
        answer = answers[info["intent_id"]]
        episode = gym_episode(info["intent_id"], int(info["seed"]), STYLES[i], answer)
        episodes.append(episode)
        scripts[episode.user_turns[0]] = (STYLES[i], answer)
    return ScriptedServer(tokenizer, scripts), episodes


def runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` of each run of equal mask values."""
    found: list[tuple[int, int, int]] = []
    for i, value in enumerate(mask):
        if found and found[-1][0] == value:
            found[-1] = (value, found[-1][1], i + 1)
        else:
            found.append((value, i, i + 1))
    return found


def user_render(turn: str, model_type: str) -> str:
    """A later user turn after a reply, as the chat template renders it. verl's default builder
    (``llama``) starts at the turn's header; its Qwen (ChatML) builder also inserts the newline
    that follows a reply's end token in the template, as a boundary token (mask 0)."""
    boundary = "\n" if model_type == "qwen2" else ""
    return f"{boundary}<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"


def test_loop_is_registered_under_its_agent_name() -> None:
    assert REGISTERED_AT_IMPORT == {"_target_": "userlm_env.integrations.verl.UserLMAgentLoop"}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_rollouts_mask_replies_and_user_turns(
    model_type: str, batch_rows: list[dict[str, Any]], tokenizer: Any, answers: dict[str, str]
) -> None:
    server, episodes = scripted(batch_rows, tokenizer, answers)
    outputs = asyncio.run(rollout(batch_rows, server, tokenizer, 1024, model_type))

    for i, (row, output, episode) in enumerate(zip(batch_rows, outputs, episodes, strict=True)):
        answer = answers[row["extra_info"]["intent_id"]]
        assert list(row["raw_prompt"]) == [{"role": "system", "content": SYSTEM}]
        first_turn = episode.user_turns[0]
        expected_prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first_turn}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert tokenizer.decode(output.prompt_ids) == expected_prompt

        ids, mask = output.response_ids, output.response_mask
        assert len(ids) == len(mask) == len(output.response_logprobs)
        spans = runs(mask)
        assert [value for value, _, _ in spans] == [1, 0] * (len(episode.rewards) - 1) + [1]
        replies = [ids[a:b] for value, a, b in spans if value == 1]
        assert replies == server.replies[first_turn]  # mask 1 exactly on generated tokens
        user_turns = [tokenizer.decode(ids[a:b]) for value, a, b in spans if value == 0]
        assert user_turns == [user_render(turn, model_type) for turn in episode.user_turns[1:]]
        expected_logprobs = [
            p
            for value, a, b in spans
            for p in (logprob_script(b - a) if value == 1 else [0.0] * (b - a))
        ]
        assert output.response_logprobs == expected_logprobs

        if model_type == "qwen2":  # the tokens are exactly the chat template's rendering
            conversation = [{"role": "system", "content": SYSTEM}]
            for k, turn in enumerate(episode.user_turns):
                conversation.append({"role": "user", "content": turn})
                conversation.append({"role": "assistant", "content": policy(STYLES[i], k, answer)})
            rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
            assert tokenizer.decode(output.prompt_ids + ids) + "\n" == rendered

        assert output.reward_score == sum(episode.rewards)
        assert output.num_turns == 2 * len(episode.rewards)
        fields = output.extra_fields
        assert fields["turn_scores"] == episode.rewards
        assert fields["termination_reason"] == episode.termination_reason
        assert fields["coverage"] == episode.coverage
        assert fields["intent_id"] == row["extra_info"]["intent_id"]
        assert fields["reward_extra_info"]["solved"] == float(episode.rewards[-1] == 1.0)

    assert [o.extra_fields["termination_reason"] for o in outputs] == [
        "solved",
        "max_replies",
        "max_replies",
    ]
    assert [o.reward_score for o in outputs] == [1.0, 0.0, 0.0]
    (pool,) = adapter._POOLS.values()  # one pool for every loop of the process
    assert pool.batcher.stats.requests == sum(len(e.rewards) + 1 for e in episodes)
    assert pool.batcher.stats.largest_batch >= 2  # concurrent loops shared simulator calls
    assert pool.open_sessions() == 0


@pytest.mark.parametrize("cut", ["inside_a_reply", "before_a_user_turn"])
def test_response_budget_ends_the_rollout(
    cut: str, batch_rows: list[dict[str, Any]], tokenizer: Any, answers: dict[str, str]
) -> None:
    row = batch_rows[1:2]  # the policy that only asks: the longest conversation
    server, _ = scripted(batch_rows, tokenizer, answers)
    (full,) = asyncio.run(rollout(row, server, tokenizer, response_length=1024))
    spans = runs(full.response_mask)
    second_reply, second_user_turn = spans[2], spans[3]
    budget = second_reply[1] + 2 if cut == "inside_a_reply" else second_user_turn[1] + 1

    server, _ = scripted(batch_rows, tokenizer, answers)
    (short,) = asyncio.run(rollout(row, server, tokenizer, response_length=budget))

    kept = second_reply[1] + 2 if cut == "inside_a_reply" else second_reply[2]
    assert len(short.response_ids) == len(short.response_mask) == kept <= budget
    assert short.response_ids == full.response_ids[:kept]
    assert short.response_mask == full.response_mask[:kept]
    (calls,) = [c for c in server.max_tokens.values() if c]
    assert calls[0] == budget  # each generation is capped at the budget left
    assert calls[1] == budget - second_reply[1]
    assert short.extra_fields["termination_reason"] == BUDGET_SPENT
    assert short.extra_fields["turn_scores"] == [0.0, 0.0]  # the cut reply was scored too
    assert short.num_turns == 4


def test_rows_and_settings_errors(
    batch_rows: list[dict[str, Any]], tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ScriptedServer(tokenizer, {})
    row = dict(batch_rows[0], raw_prompt=[{"role": "user", "content": "I speak first"}])
    with pytest.raises(VerlSettingsError, match="only system messages"):
        asyncio.run(rollout([row], server, tokenizer, 64))
    row = dict(batch_rows[0], extra_info={**batch_rows[0]["extra_info"], "seed": 1.5})
    with pytest.raises(VerlSettingsError, match="integer"):
        asyncio.run(rollout([row], server, tokenizer, 64))
    entry = OmegaConf.create({"_target_": "userlm_env.integrations.verl.UserLMAgentLoop"})
    monkeypatch.setitem(_agent_loop_registry, AGENT_NAME, entry)
    row = dict(batch_rows[0], extra_info={"intent_id": "gsm_symbolic/0-0"})
    with pytest.raises(VerlSettingsError, match="env id"):
        asyncio.run(rollout([row], server, tokenizer, 64))


def test_readme_setup_composes_into_the_loop(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verl's trainer config with the README's overrides, and its agent-loop file read as
    AgentLoopWorker reads it, build a loop with the README's settings (no GPU, no server)."""
    loop_yaml, overrides = readme_verl_setup()
    assert "userlm_agent.yaml" in overrides[-1] and len(overrides) == 9
    monkeypatch.chdir(tmp_path)
    Path("userlm_agent.yaml").write_text(loop_yaml)
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    rollout_config = config.actor_rollout_ref.rollout
    path = resolve_config_path(rollout_config.agent.agent_loop_config_path)
    for entry in OmegaConf.load(path):
        monkeypatch.setitem(_agent_loop_registry, entry.name, entry)
    loop = hydra.utils.instantiate(
        config=_agent_loop_registry[AGENT_NAME],
        trainer_config=DictConfigWrap(config=config),
        server_manager=ScriptedServer(tokenizer, {}),
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )
    assert (loop.prompt_length, loop.response_length) == (1024, 4096)
    pool = loop.pool_for({})  # builds the simulator client; nothing is sent yet
    assert type(pool.parts.simulator).__name__ == "UserLMServerSimulator"
    assert pool.parts.simulator.config.api_base == "http://127.0.0.1:8001/v1"
    assert pool.parts.core.max_replies == 8
    assert pool.env_id == ENV_ID


def test_verl_rows() -> None:
    rows = verl_rows(ENV_ID, rows=2, seed=5, max_replies=3)
    assert rows[1] == {
        "data_source": ENV_ID,
        "agent_name": AGENT_NAME,
        "prompt": [{"role": "system", "content": "You are a helpful assistant."}],
        "extra_info": {
            "index": 1,
            "env_id": ENV_ID,
            "env_kwargs": {"max_replies": 3},
            "intent_id": "gsm_symbolic/0-1",
            "seed": 6,
        },
    }
    assert len(verl_rows("userlm_env/HumanEval-v0")) == 164
    with pytest.raises(VerlSettingsError):
        verl_rows(ENV_ID, rows=1, matcher=object())
