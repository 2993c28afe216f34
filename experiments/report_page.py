"""The report's single static HTML page: it leads with the Lost-in-Conversation comparison (the
protocol table and its figure), then the summary table, the figures (embedded as base64 PNG)
and, for each intent, its simulations side by side (user turns only) with their metrics. A
turn the simulator kept although it broke a guardrail after every try carries a badge naming
the rule (from the record's ``user_turn_metadata``).

The page needs nothing outside itself: inline CSS, no external asset, no network. A tiny inline
script marks ``<body data-ok="yes">`` once it has counted the simulations, so a headless
browser can prove that the page loaded and ran without a script error.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from userlm_env.metrics.suite import SUITE, compute_suite, format_value

if TYPE_CHECKING:
    from experiments.report import Simulation

__all__ = ["render_page", "write_page"]

Groups = Mapping[tuple[str, str], Sequence["Simulation"]]
_PER_INTENT = [m for m in SUITE if m.name in ("unigram_difference", "turn_variance", "turn_range")]
_FLAGS = ("role_break", "drift", "premature_end", "add_demands", "repeat_required")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430;
background:#fafbfc}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d8dde3}
div.wide{overflow-x:auto}table.summary{border-collapse:collapse;font-size:12px}
table.summary th,table.summary td{border:1px solid #d8dde3;padding:3px 6px;text-align:right}
table.summary th{background:#eef1f5}table.summary td:first-child{text-align:left}
figure{display:inline-block;margin:8px}figure img{max-width:560px;border:1px solid #d8dde3}
section.intent{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:10px 14px;
margin:16px 0}
.meta{color:#5b6776;font-size:12px}.simulator h4{margin:10px 0 4px}
.sims{display:flex;gap:10px;overflow-x:auto;align-items:flex-start}
article.simulation{flex:0 0 250px;border:1px solid #cfd6de;border-radius:5px;padding:6px;
background:#f7f9fb;font-size:12px}
article.simulation header{font-weight:600;margin-bottom:4px}
ol.turns{padding-left:20px;margin:4px 0}ol.turns li{margin:3px 0;white-space:pre-wrap}
.ids{color:#2f6f3e;font-size:11px;font-weight:600}.none{color:#a0a8b3}
.flag{display:inline-block;background:#fde2e1;color:#8a1f17;border-radius:3px;padding:0 4px;
margin-right:3px;font-size:11px}.ok{background:#e3f4e7;color:#1f6a33}
ol.shards li.optional{color:#5b6776;font-style:italic}
"""

_SCRIPT = """
window.addEventListener('error', function () { document.body.dataset.ok = 'error'; });
(function () {
  var count = document.querySelectorAll('article.simulation').length;
  document.body.dataset.simulations = String(count);
  if (document.body.dataset.ok !== 'error') { document.body.dataset.ok = count ? 'yes' : 'empty'; }
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>(no episodes)</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f'<div class="wide"><table class="summary"><tr>{head}</tr>{body}</table></div>'


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(path.stem.replace('_', ' '))}</figcaption></figure>"
    )


def _guardrail_badge(metadata: Any) -> str:
    """A badge for a turn kept although it broke a guardrail after every try, else ``""``."""
    rule = metadata.get("guardrail_failed") if isinstance(metadata, Mapping) else None
    if not rule:
        return ""
    tries = metadata.get("tries", "?")
    title = f"kept after {tries} tries although it breaks the {rule} guardrail"
    return f' <span class="flag" title="{_e(title)}">{_e(str(rule).replace("_", " "))}</span>'


def _simulation(sim: Simulation) -> str:
    metadata = list(sim.record.get("user_turn_metadata") or [])
    metadata += [None] * (len(sim.view.user_texts) - len(metadata))
    turns = "".join(
        f'<li><span class="{"ids" if ids else "ids none"}">[{_e(", ".join(map(str, ids)) or "-")}]'
        f"</span> {_e(text)}{_guardrail_badge(meta)}</li>"
        for text, ids, meta in zip(sim.view.user_texts, sim.view.revealed, metadata, strict=False)
    )
    metrics = sim.episode.metrics
    flags = [f'<span class="flag">{_e(f.replace("_", " "))}</span>' for f in _FLAGS if metrics[f]]
    status = "solved" if sim.episode.solved else "not solved"
    end = sim.record.get("termination_reason") or "?"
    header = (
        f"#{_e(sim.record.get('repeat', '?'))} · {sim.episode.user_turns} user turns · {status} · "
        f"coverage {100 * metrics['intent_coverage']:.0f}% · {_e(end)}"
    )
    footer = "".join(flags) or '<span class="flag ok">no flags</span>'
    return (
        f'<article class="simulation" data-key="{_e(sim.record.get("key", ""))}">'
        f'<header>{header}</header><ol class="turns">{turns}</ol>'
        f"<footer>{footer}</footer></article>"
    )


def _intent_section(intent_id: str, by_simulator: Mapping[str, Sequence[Simulation]]) -> str:
    intent = next(iter(by_simulator.values()))[0].view.intent
    shards = "".join(
        f'<li value="{s.id}" class="{"required" if s.required else "optional"}">{_e(s.text)}</li>'
        for s in intent.shards
    )
    blocks = []
    for simulator, sims in by_simulator.items():
        values = compute_suite([s.episode for s in sims], _PER_INTENT)
        summary = " · ".join(f"{m.label} {format_value(m, values[m.name])}" for m in _PER_INTENT)
        cards = "".join(_simulation(s) for s in sims)
        blocks.append(
            f'<div class="simulator"><h4>{_e(simulator)}</h4><p class="meta">{_e(summary)}</p>'
            f'<div class="sims">{cards}</div></div>'
        )
    return (
        f'<section class="intent" data-intent="{_e(intent_id)}"><h3>{_e(intent_id)} '
        f'<span class="meta">{_e(intent.task)}</span></h3><details><summary>Intent and '
        f'shards</summary><p>{_e(intent.instruction)}</p><ol class="shards">{shards}</ol>'
        f"</details>{''.join(blocks)}</section>"
    )


def _by_intent(groups: Groups) -> dict[str, dict[str, list[Simulation]]]:
    table: dict[str, dict[str, list[Simulation]]] = defaultdict(lambda: defaultdict(list))
    for (simulator, _), sims in groups.items():
        for sim in sims:
            table[sim.view.intent.intent_id][simulator].append(sim)
    return {k: dict(v) for k, v in table.items()}


_PROTOCOL_NOTE = (
    "One row per assistant x setting (the simulator config of its runs). performance: mean "
    "run score (1 = solved); aptitude: mean over intents of the 90th percentile of an intent's "
    "run scores; unreliability: mean over intents of the 90th minus the 10th percentile; "
    "degradation_vs_full: the drop from the same assistant's full setting over shared intents. "
    "Intervals: 95% bootstrap over intents."
)


def _protocol_section(protocol: Sequence[Mapping[str, Any]], figure: Path | None) -> str:
    """The leading section: the protocol table and its figure (empty without protocol rows)."""
    if not protocol:
        return ""
    return (
        '<section class="protocol"><h2>Fully specified vs in conversation</h2>'
        f'<p class="meta">{_e(_PROTOCOL_NOTE)}</p>{_table(protocol)}'
        f"{_figure(figure) if figure else ''}</section>"
    )


def render_page(
    rows: Sequence[Mapping[str, Any]],
    groups: Groups,
    figures: Sequence[Path],
    source: str,
    *,
    protocol: Sequence[Mapping[str, Any]] = (),
    protocol_figure: Path | None = None,
) -> str:
    """The whole HTML document; ``protocol`` holds the printed protocol rows
    (:func:`experiments.report.protocol_table`), shown first with ``protocol_figure``."""
    intents = "".join(_intent_section(i, sims) for i, sims in _by_intent(groups).items())
    episodes = sum(len(s) for s in groups.values())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>userlm-env simulation report</title><style>{_CSS}</style></head>"
        '<body data-ok="no"><h1>Simulation report</h1>'
        f'<p class="meta">{_e(source)} · {episodes} episodes · {len(groups)} simulator x task '
        f"groups</p>{_protocol_section(protocol, protocol_figure)}"
        f"<h2>Summary</h2>{_table(rows)}<h2>Figures</h2>"
        f"{''.join(_figure(p) for p in figures)}<h2>Simulations by intent</h2>"
        '<p class="meta">User turns only; [ids] are the shards each turn revealed; a red badge'
        " on a turn names the guardrail it still broke after every resampling try.</p>"
        f"{intents}<script>{_SCRIPT}</script></body></html>"
    )


def write_page(
    rows: Sequence[Mapping[str, Any]],
    groups: Groups,
    figures: Sequence[Path],
    path: Path,
    source: Path | str = "",
    *,
    protocol: Sequence[Mapping[str, Any]] = (),
    protocol_figure: Path | None = None,
) -> Path:
    """Write the page to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_page(
        rows, groups, figures, str(source), protocol=protocol, protocol_figure=protocol_figure
    )
    path.write_text(page, encoding="utf-8")
    return path
