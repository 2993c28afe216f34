"""Reports: the leading Lost-in-Conversation comparison, Table 3 columns with hand-checked values,
figures, and the HTML page rendered in headless Chromium."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from assistants.scripted import OracleAssistant
from experiments.report import (
    PROTOCOL_TITLE,
    SIMULATOR_TITLE,
    collect_runs,
    group_simulations,
    main,
    merge_rows,
    protocol_table,
    setting_groups,
)
from experiments.report_figures import (
    coverage_curve,
    protocol_label,
    unigram_note,
    write_figures,
    write_protocol_figure,
)
from experiments.report_page import write_page
from simulators import make_simulator
from simulators.sharded import ShardedSimulator
from userlm_env.core import ConversationCore
from userlm_env.metrics.protocol import protocol_rows
from userlm_env.records import JsonlWriter
from userlm_env.rollout import make_jobs, run_episodes
from userlm_env.types import Intent, Shard

CHROMIUM = Path("/usr/bin/chromium")


def toy_intents() -> list[Intent]:
    """Two math intents (written for this test); ``pens`` has its optional shard in the middle."""
    apples = Intent(
        "gsm8k",
        "toy/apples",
        "Sam has 12 apples and buys 7 more, then gives 4 away. How many are left?",
        (
            Shard(1, "How many apples does Sam have left?"),
            Shard(2, "Sam starts with 12 apples."),
            Shard(3, "He buys 7 more apples."),
            Shard(4, "He gives 4 apples away."),
            Shard(5, "Answer with a whole number.", required=False),
        ),
        {"answer": "15"},
    )
    pens = Intent(
        "gsm8k",
        "toy/pens",
        "Ana buys 3 boxes of 6 pens and loses 2. How many pens does she have?",
        (
            Shard(1, "How many pens does Ana have?"),
            Shard(2, "Pens are handy for taking notes.", required=False),
            Shard(3, "Ana buys 3 boxes with 6 pens each."),
            Shard(4, "She loses 2 pens."),
        ),
        {"answer": "16"},
    )
    return [apples, pens]


def make_run(
    root: Path, name: str, required_first: bool = True, *, simulator=None, max_replies: int = 8
) -> Path:
    """A run folder like ``experiments.simulate`` writes (results and run info); the simulator
    is a sharded user unless given."""
    run = root / f"simulator={name}"
    run.mkdir(parents=True)
    simulator = simulator or ShardedSimulator(required_first=required_first)
    core = ConversationCore(simulator, max_replies=max_replies)
    intents = toy_intents()
    jobs = make_jobs(intents, n_per_intent=2)
    oracle = OracleAssistant(intents)
    run_episodes(jobs, core, oracle, on_done=JsonlWriter(run / "results.jsonl"))
    info = {"simulator": name, "intents": "toy", "assistant": "oracle"}
    (run / "run_info.json").write_text(json.dumps(info))
    return run


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    make_run(root, "sharded", required_first=True)
    make_run(root, "sharded_required_last", required_first=False)
    return root


@pytest.fixture()
def protocol_sweep(tmp_path: Path) -> Path:
    """The oracle on the full instruction, and sharded with 3 replies: enough for pens (3
    required shards, asked for first), not for apples (4)."""
    root = tmp_path / "protocol"
    make_run(root, "full", simulator=make_simulator("full"))
    make_run(root, "sharded", max_replies=3)
    return root


def test_protocol_rows_compare_each_setting_with_full(protocol_sweep: Path) -> None:
    full, sharded = protocol_rows(setting_groups(collect_runs(protocol_sweep)))
    assert (full["assistant"], full["setting"], full["intents"], full["runs"]) == (
        "oracle", "full", 2, 4
    )  # fmt: skip
    assert full["performance"] == full["aptitude"] == 1.0 and full["unreliability"] == 0.0
    assert full["degradation_vs_full"] == 0.0
    # pens solved in both runs, apples in none: P .5, A (1 + 0) / 2, U 0, drop .5 of 1.0
    assert (sharded["setting"], sharded["performance"], sharded["aptitude"]) == (
        "sharded",
        0.5,
        0.5,
    )
    assert sharded["unreliability"] == 0.0 and sharded["degradation_vs_full"] == 0.5
    assert sharded["degradation_vs_full_pct"] == 50.0
    low, high = sharded["degradation_vs_full_ci95_low"], sharded["degradation_vs_full_ci95_high"]
    assert low <= 0.5 <= high
    printed = protocol_table([full, sharded])
    assert list(printed[1])[4:] == [
        "performance", "performance_ci95", "aptitude", "aptitude_ci95", "unreliability",
        "unreliability_ci95", "degradation_vs_full", "degradation_vs_full_ci95",
        "degradation_vs_full_pct",
    ]  # fmt: skip
    assert printed[1]["degradation_vs_full_pct"] == "50.0"
    assert protocol_label(sharded, several_assistants=False) == "sharded\n-50% vs full"


def test_protocol_figure_and_page_lead_with_the_comparison(
    protocol_sweep: Path, tmp_path: Path
) -> None:
    runs = collect_runs(protocol_sweep)
    rows = protocol_rows(setting_groups(runs))
    figure = write_protocol_figure(rows, tmp_path / "figures" / "protocol.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_page(
        merge_rows(runs), group_simulations(runs), [], tmp_path / "report.html",
        protocol=protocol_table(rows), protocol_figure=figure,
    ).read_text()  # fmt: skip
    lead = page.index("Fully specified vs in conversation")
    assert lead < page.index('alt="protocol"') < page.index("<h2>Summary</h2>")
    assert page.index("degradation_vs_full") > lead


def test_cli_leads_with_the_protocol_table(protocol_sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report" / "report"
    assert main([str(protocol_sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.index(PROTOCOL_TITLE) < printed.index(SIMULATOR_TITLE)
    header = printed.splitlines()[2]
    for column in ("performance", "aptitude", "unreliability", "degradation_vs_full"):
        assert f" {column} " in header
    assert (tmp_path / "report" / "report_figures" / "protocol.png").exists()
    protocol_csv = (tmp_path / "report" / "report_protocol.csv").read_text().splitlines()
    assert protocol_csv[0].startswith("assistant,setting,intents,runs,performance,")
    assert out.with_suffix(".md").read_text().startswith(f"## {PROTOCOL_TITLE}")


def test_rows_carry_table3_metrics_and_flags(sweep: Path) -> None:
    rows = merge_rows(collect_runs(sweep))
    first, last = rows
    # required first: apples 1,2,3,4 (coverage .8), pens 1,3,4 (.75); optional shards skipped
    assert (first["simulator"], first["intents"], first["episodes"]) == ("sharded", "toy", 4)
    assert first["intent_coverage"] == "77.5" and first["skip_non_required"] == "100.0"
    assert first["turn_range"] == "3.5-3.5" and first["turn_variance"] == "0.00"
    assert first["unigram_difference"] == "0.00" and first["assistant_score"] == 1.0
    # in id order: apples 1,2,3,4 (.8), pens 1,2,3,4 (1.0) and pens' optional shard is said
    assert last["intent_coverage"] == "90.0" and last["skip_non_required"] == "50.0"
    assert last["turn_range"] == "4.0-4.0"
    for row in rows:
        assert row["role_break"] == row["drift"] == row["premature_end"] == "0.0"
        assert row["repeat_required"] == row["add_demands"] == row["kept_violations"] == "0.0"


def test_coverage_curve_by_hand(sweep: Path) -> None:
    groups = group_simulations(collect_runs(sweep))
    views = [s.view for s in groups[("sharded", "toy")]]
    # apples: .2 .4 .6 .8 (x2); pens: .25 .5 .75 .75 (x2)
    assert coverage_curve(views, 4) == pytest.approx([0.225, 0.45, 0.675, 0.775])


def render(page: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail("headless Chromium is needed at /usr/bin/chromium (apt-get install chromium)")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync", "--enable-logging=stderr", "--v=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", *flags, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_html_page_renders_in_headless_chromium(sweep: Path, tmp_path: Path) -> None:
    runs = collect_runs(sweep)
    groups = group_simulations(runs)
    figures = write_figures(groups, tmp_path / "figures")
    assert [p.name for p in figures] == ["turns.png", "coverage.png", "unigram_difference.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures)
    page = write_page(merge_rows(runs), groups, figures, tmp_path / "report.html")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    dom = render(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ok="yes"' in dom.stdout and 'data-simulations="8"' in dom.stdout
    assert "toy/apples" in dom.stdout and "toy/pens" in dom.stdout
    assert "Sam starts with 12 apples." in dom.stdout and "sharded_required_last" in dom.stdout
    assert "Uncaught" not in dom.stderr
    shot = tmp_path / "page.png"
    screenshot = render(page, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}")
    assert screenshot.returncode == 0 and shot.stat().st_size > 20_000


def test_cli_writes_tables_figures_and_page(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report" / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "unigram_difference" in printed and "aptitude" in printed
    assert "degradation_vs_full" not in printed  # no full setting: no degradation
    for suffix in (".md", ".csv", ".html"):
        assert out.with_suffix(suffix).exists()
    assert len(list((tmp_path / "report" / "report_figures").glob("*.png"))) == 4
    assert "%" not in out.with_suffix(".csv").read_text().splitlines()[0]
    results = sweep / "simulator=sharded" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    del records[0]["intent"]  # a record from before records carried their intent
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit) as usage_error:  # a usage error, not a traceback
        main([str(sweep), "--out", str(tmp_path / "again")])
    assert usage_error.value.code == 2
    assert "carries no intent" in capsys.readouterr().err


def test_report_reads_metrics_from_records_and_never_the_run_config(sweep: Path) -> None:
    results = sweep / "simulator=sharded" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert all("reference" not in json.dumps(r["intent"]) for r in records)
    for record in records:  # a stored value is what the report shows: nothing is recomputed
        record["metrics"]["role_break"] = True
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    first = merge_rows(collect_runs(sweep))[0]
    assert first["role_break"] == "100.0"
    assert not list(sweep.rglob(".hydra"))


def test_empty_diversity_figure_says_why() -> None:
    assert "n_per_intent >= 2" in (unigram_note([None, None]) or "")
    assert unigram_note([None, 0.4]) is None


def test_turns_kept_despite_a_guardrail_carry_a_badge(sweep: Path, tmp_path: Path) -> None:
    results = sweep / "simulator=sharded" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    records[0]["user_turn_metadata"][1] = {"tries": 8, "guardrail_failed": "repeat"}
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = collect_runs(sweep)
    groups = group_simulations(runs)
    page = write_page(merge_rows(runs), groups, [], tmp_path / "report.html").read_text()
    badge = 'title="kept after 8 tries although it breaks the repeat guardrail">repeat</span>'
    assert page.count(badge) == 1
    assert page.count("although it breaks") == 1  # no other turn is flagged
