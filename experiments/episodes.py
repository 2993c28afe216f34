"""What the ``simulate`` and ``score`` entry points share: run the episodes still missing, then
print the score table and report failures.

A run folder's ``results.jsonl`` holds one record per finished episode, appended (and fsynced)
as each one ends. Re-running into the same folder runs only the episodes without a successful
record: finished ones are skipped, failed ones run again, and readers keep the last record of
each episode key (:func:`userlm_env.records.latest_by_key`).

Run controls (config keys): ``progress`` (:class:`~userlm_env.progress.ProgressSettings`: a
live bar on a terminal, a plain line every N episodes or seconds otherwise), ``verbose``
(third-party libraries' INFO chatter, LiteLLM's per-call lines included, is off unless true),
``max_cost_usd`` (a spending cap: once the spend recorded in the run folder's ledger
``spend.json`` reaches it, no new episode starts, the ones in flight finish and are recorded,
and the exit status is :data:`EXIT_SPEND_CAP`; re-running with a higher cap resumes),
``dry_run`` (print the episodes and the bounds on LLM calls, tokens and cost, call nothing) and
``preflight`` (default true: before the first episode, check the keys of hosted models, that
local models resolve offline, and each ``api_base`` with one ``GET /models`` request;
:mod:`userlm_env.preflight`).

A run that cannot start as configured (a mandatory setting left ``???``, a config that cannot
be built, a failed preflight check, a spending cap on an unpriced model) prints one line
``error: ...`` naming what to fix and exits with :data:`EXIT_SETUP` before any episode starts.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.run_info import write_run_info
from userlm_env.core import ConversationCore
from userlm_env.errors import SpendCapError, UserLMEnvError
from userlm_env.estimate import RunEstimate, estimate_run
from userlm_env.logs import quiet_libraries
from userlm_env.metrics.suite import format_table, score_rows
from userlm_env.preflight import PreflightError, check_required, preflight
from userlm_env.progress import Progress, ProgressSettings
from userlm_env.records import EpisodeRecord, JsonlWriter, latest_by_key, read_records
from userlm_env.rollout import EpisodeJob, first_per_task, make_jobs, run_episodes
from userlm_env.spend import (
    Spend,
    SpendMeter,
    llm_clients,
    read_ledger,
    unpriced_models,
    write_ledger,
)
from userlm_env.types import Intent

__all__ = [
    "EXIT_FAILURES",
    "EXIT_SETUP",
    "EXIT_SPEND_CAP",
    "EpisodePlan",
    "JobFailedError",
    "assistant_label",
    "check_cap",
    "common_error",
    "entry_point",
    "estimate_missing_episodes",
    "give_intents",
    "report_run",
    "run_and_report",
    "run_missing_episodes",
]

log = logging.getLogger(__name__)

#: The Hydra config folder of the entry points.
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: Exit status of ``simulate`` and ``score`` when some episodes failed (after retries).
EXIT_FAILURES = 3
#: Exit status when the spending cap stopped the run before every episode had started.
EXIT_SPEND_CAP = 4
#: Exit status when the run cannot start as configured (a missing setting, a failed preflight
#: check, a cap on an unpriced model).
EXIT_SETUP = 2


@dataclass(frozen=True)
class EpisodePlan:
    """How many of the configured episodes this call ran, and how many were already done."""

    intents: int  # intents selected by the intents config
    ran: int  # episodes run now (new ones and retries of failed ones)
    already_finished: int  # episodes with a successful record from an earlier run
    not_started: int = 0  # episodes the spending cap kept from starting
    spend: Spend = field(default_factory=Spend)  # recorded spend of the run folder, all runs
    cap_usd: float | None = None  # the spending cap in force

    @property
    def capped(self) -> bool:
        """Whether the spending cap kept episodes from starting."""
        return self.not_started > 0


@dataclass(frozen=True)
class _Pending:
    """The configured episodes and which of them still need a run."""

    intents: list[Intent]
    jobs: list[EpisodeJob]  # episodes without a successful record
    finished: int  # episodes with one


def _pending(cfg: DictConfig, results: Path) -> _Pending:
    finished = {r["key"] for r in latest_by_key(read_records(results)) if not r.get("error")}
    intents = first_per_task(_build(cfg.intents, "intents"), cfg.max_intents_per_task)
    jobs = make_jobs(intents, cfg.n_per_intent, cfg.seed)
    missing = [j for j in jobs if j.key not in finished]
    return _Pending(intents, missing, len(jobs) - len(missing))


def run_missing_episodes(cfg: DictConfig, results: Path, *, label: str = "run") -> EpisodePlan:
    """Run the episodes of ``cfg`` that have no successful record in ``results``.

    ``cfg`` holds the ``intents``, ``simulator`` and ``assistant`` configs to instantiate, and
    ``n_per_intent``, ``max_intents_per_task``, ``seed``, ``max_replies`` and ``batch_size``;
    optionally ``max_cost_usd`` and ``progress``. The simulator and assistant are built only
    when something is left to run, and then checked (:func:`userlm_env.preflight.preflight`,
    unless ``preflight`` is false) before the first episode starts. Progress (episodes done of
    all configured, failures, spend, ETA) goes to stderr under ``label``.

    Raises:
        SpendCapError: ``max_cost_usd`` is set and a model that costs money has no known price.
        PreflightError: A config cannot be built, or a preflight check failed (no episode ran).
    """
    pending = _pending(cfg, results)
    jobs, run_dir = pending.jobs, results.parent
    cap = _cap(cfg)
    earlier = read_ledger(run_dir)
    log.info(
        "%d intents, %d episodes to run (%d finished)",
        len(pending.intents),
        len(jobs),
        pending.finished,
    )
    plan = EpisodePlan(len(pending.intents), 0, pending.finished, 0, earlier, cap)
    if not jobs:
        return plan
    simulator = _build(cfg.simulator, "simulator")
    assistant = give_intents(_build(cfg.assistant, "assistant"), pending.intents)
    clients = {"assistant": llm_clients(assistant), "simulator": llm_clients(simulator)}
    check_cap(cap, clients)
    if cfg.get("preflight", True):
        passed = preflight({"assistant": assistant, "simulator": simulator})
        log.info("preflight passed: %s", "; ".join(passed) or "nothing to check")
    meter = SpendMeter([c for role in clients.values() for c in role], earlier=earlier)
    if cap is not None and not _under_cap(meter(), cap):
        return EpisodePlan(len(pending.intents), 0, pending.finished, len(jobs), earlier, cap)
    core = ConversationCore(simulator, max_replies=cfg.max_replies)
    writer = JsonlWriter(results)
    total = pending.finished + len(jobs)
    settings = _progress_settings(cfg)
    spend = meter if meter.clients else None
    started = 0
    with Progress(
        total, label=label, done_before=pending.finished, spend=spend, settings=settings
    ) as progress:

        def on_done(record: EpisodeRecord) -> None:
            writer(record)
            if meter.clients:
                write_ledger(run_dir, meter())
            progress.advance(1, failed=1 if record.error else 0)

        def may_start() -> bool:
            return cap is None or _under_cap(meter(), cap)

        try:
            records = run_episodes(
                jobs,
                core,
                assistant,
                batch_size=cfg.batch_size,
                on_done=on_done,
                may_start=may_start,
            )
            started = len(records)
        finally:
            if meter.clients:
                write_ledger(run_dir, meter())
    return EpisodePlan(
        len(pending.intents), started, pending.finished, len(jobs) - started, meter(), cap
    )


def estimate_missing_episodes(cfg: DictConfig, results: Path) -> RunEstimate:
    """The dry run: bounds on what running ``cfg``'s missing episodes would call and cost.

    Builds the simulator and assistant (which loads no model and sends no request) and asks
    :func:`userlm_env.estimate.estimate_run`.
    """
    pending = _pending(cfg, results)
    return estimate_run(
        [j.intent for j in pending.jobs],
        episodes_per_intent=1,
        max_replies=cfg.max_replies,
        simulator=_build(cfg.simulator, "simulator"),
        assistant=_build(cfg.assistant, "assistant"),
        already_finished=pending.finished,
    )


def _build(node: DictConfig, role: str) -> Any:
    """Instantiate the ``role`` config group; a config that cannot be built (an unknown name,
    a bad value, an unknown field, a missing data file) becomes one :class:`PreflightError`
    line instead of Hydra's nested traceback."""
    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserLMEnvError | TypeError | ValueError):
            message = f"the {role} config cannot be built: {type(cause).__name__}: {cause}"
            raise PreflightError(message) from error
        raise


def check_cap(cap: float | None, clients: Mapping[str, Sequence[Any]]) -> None:
    """Refuse a spending cap that cannot be enforced: a model of ``clients`` has no price.

    Args:
        cap: ``max_cost_usd`` (``None``: no cap, nothing to check).
        clients: The LLM clients of each config group (``"assistant"``, ``"simulator"``).

    Raises:
        SpendCapError: Naming the model and the two overrides that give it a price.
    """
    if cap is None:
        return
    for role, role_clients in clients.items():
        for model in unpriced_models(role_clients):
            raise SpendCapError(
                f"max_cost_usd={cap:g} needs the price of every model the run pays for, and "
                f"LiteLLM's price map has none for the {role} model {model!r}. Give it in USD per "
                f"million tokens: {role}.input_usd_per_mtok=<price> "
                f"{role}.output_usd_per_mtok=<price> (0 and 0 for a free self-hosted server), "
                "or drop max_cost_usd."
            )


def _cap(cfg: DictConfig) -> float | None:
    cap = cfg.get("max_cost_usd")
    if cap is None:
        return None
    if not isinstance(cap, int | float) or isinstance(cap, bool) or cap < 0:
        raise SpendCapError(f"max_cost_usd must be a number of USD >= 0, got {cap!r}")
    return float(cap)


def _under_cap(spend: Spend, cap: float) -> bool:
    """Whether new episodes may start: the spend is below the cap and fully priced (a call the
    server reported no usage for cannot be counted, so a capped run stops there)."""
    return spend.known_usd < cap and not spend.unknown


def _progress_settings(cfg: DictConfig) -> ProgressSettings | None:
    node = cfg.get("progress")
    return None if node is None else instantiate(node)


def give_intents(assistant: Any, intents: Iterable[Intent]) -> Any:
    """Hand the intents to a scripted assistant that keeps an answer key (``learn``)."""
    learn = getattr(assistant, "learn", None)
    if callable(learn):
        learn(intents)
    return assistant


def run_and_report(
    cfg: DictConfig, out_dir: Path, table_name: str, *, label: str = "run"
) -> list[dict[str, Any]]:
    """Run the episodes still missing from ``out_dir``'s results, then report the run."""
    results = out_dir / cfg.results_file
    plan = run_missing_episodes(cfg, results, label=label)
    return report_run(results, out_dir / table_name, plan=plan)


def entry_point(config_name: str, table_name: str) -> Callable[[], None]:
    """The Hydra ``main`` of an episode-running script: quiet the libraries (unless
    ``verbose``), refuse mandatory settings left unset, record the run's config choices, then
    either print the dry-run estimate or run and report (exit status 3 when episodes failed, 4
    when the spending cap stopped the run, 2 with one ``error:`` line when it cannot start as
    configured: :func:`userlm_env.preflight.check_required`, a config that cannot be built, a
    failed preflight check, a cap on an unpriced model)."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        quiet_libraries(verbose=bool(cfg.get("verbose", False) or HydraConfig.get().verbose))
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            check_required(cfg)
            if cfg.get("dry_run", False):
                estimate = estimate_missing_episodes(cfg, out_dir / cfg.results_file)
                print(estimate.table())
                _print_cap_verdict(estimate, _cap(cfg))
                return
            write_run_info(out_dir, **assistant_label(cfg))
            run_and_report(cfg, out_dir, table_name, label=_job_label(config_name))
        except (SpendCapError, PreflightError) as error:
            print(f"error: {error}", file=sys.stderr)
            _stop(EXIT_SETUP)
        except SystemExit as stop:
            _stop(stop.code)

    return main


class JobFailedError(UserLMEnvError, RuntimeError):
    """A sweep job ended with a non-zero status (raised so Hydra runs the other jobs first)."""


def _stop(status: int | str | None) -> None:
    """End a run with ``status``. In a sweep a job must not exit the process (the jobs after it
    would never run): it raises :class:`JobFailedError`, which Hydra records; the sweep then
    runs its other jobs and exits non-zero."""
    if status in (0, None):
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        job = HydraConfig.get().job
        raise JobFailedError(
            f"sweep job {job.num} ({job.override_dirname}) ended with status {status}"
        )
    sys.exit(status)


def _job_label(config_name: str) -> str:
    """The progress label: the job's name (``simulate``, ``score``), and its number in a sweep."""
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.name or config_name
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{name} job {hydra_cfg.job.num}"
    return name


def _print_cap_verdict(estimate: RunEstimate, cap: float | None) -> None:
    if cap is None:
        return
    bound = estimate.cost_usd()
    if bound is None:
        print(f"max_cost_usd={cap:g}: the cost bound is unknown (see the table)")
    elif bound <= cap:
        print(f"max_cost_usd={cap:g}: the run cannot reach the cap (bound ${bound:.4f})")
    else:
        print(f"max_cost_usd={cap:g}: the run may stop at the cap (bound ${bound:.4f})")


def assistant_label(cfg: DictConfig) -> dict[str, str]:
    """``{"assistant": "<config>:<model>"}`` when the assistant config names a model (so a
    sweep over models tells them apart in reports), else nothing (the config name is kept)."""
    assistant = cfg.get("assistant")
    if assistant is None or "model" not in assistant or OmegaConf.is_missing(assistant, "model"):
        return {}
    model = assistant.model
    choice = HydraConfig.get().runtime.choices.get("assistant", "assistant")
    return {"assistant": f"{choice}:{model}"}


def report_run(
    results: Path, table_file: Path, *, plan: EpisodePlan | None = None
) -> list[dict[str, Any]]:
    """Print and write the score table of ``results``; exit with :data:`EXIT_SPEND_CAP` when
    the spending cap kept episodes from starting (``plan``), else with :data:`EXIT_FAILURES`
    and the most common error when episodes failed."""
    records = read_records(results)
    rows = score_rows(records)
    table = format_table(rows)
    table_file.write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nresults: {results}")
    failed = rows[-1]["failed"] if rows else 0
    if failed:
        print(f"{failed} episode(s) failed; re-run the same command to retry them", file=sys.stderr)
        print(common_error(records), file=sys.stderr)
    if plan is not None and plan.capped:
        print(_cap_message(plan, results), file=sys.stderr)
        sys.exit(EXIT_SPEND_CAP)
    if failed:
        sys.exit(EXIT_FAILURES)
    return rows


def _cap_message(plan: EpisodePlan, results: Path) -> str:
    reason = (
        "some calls could not be priced (the server reported no token usage)"
        if plan.spend.unknown
        else f"the recorded spend {plan.spend} reached max_cost_usd={plan.cap_usd:g}"
    )
    return (
        f"spending cap: {reason}. {plan.not_started} episode(s) not started; the {plan.ran} "
        f"started in this run finished and are recorded in {results}. Re-run the same command "
        "with a higher max_cost_usd to resume."
    )


def common_error(records: Iterable[Mapping[str, Any]], limit: int = 400) -> str:
    """The most frequent error among the episodes that failed last, with its count."""
    errors = Counter(str(r["error"]) for r in latest_by_key(records) if r.get("error"))
    if not errors:
        return "no failed episode"
    error, count = errors.most_common(1)[0]
    text = error if len(error) <= limit else error[:limit] + "..."
    return f"most common error ({count} of {sum(errors.values())}): {text}"
