"""Metrics of simulated conversations, each implemented once and used by the envs' ``info``,
the experiment reports and the tests.

* :mod:`~userlm_env.metrics.text`: tokens, lemmas (simplemma) and stopwords (stop-words).
* :mod:`~userlm_env.metrics.shards`: which shards a user turn reveals (lexical matcher, LLM
  judge) and matcher precision / recall / F1.
* :mod:`~userlm_env.metrics.episode`: per-conversation metrics (coverage, pace, repeat / skip /
  add) and faithfulness flags (role break, drift, premature end).
* :mod:`~userlm_env.metrics.diversity`: exact pairwise Jaccard as matrix operations.
* :mod:`~userlm_env.metrics.suite`: the paper's Table 3 over many conversations, and every
  metric's declaration (direction, aggregation).
* :mod:`~userlm_env.metrics.protocol`: the Lost-in-Conversation protocol (performance,
  aptitude, unreliability, degradation from the fully specified setting) with bootstrap
  intervals.
* :mod:`~userlm_env.metrics.intrinsic`: the paper's Table 2 (first-turn diversity, intent
  decomposition, termination F1, role and intent adherence, naturalness hook); its data
  records and loaders are in :mod:`~userlm_env.metrics.intrinsic_data`.
* :mod:`~userlm_env.metrics.judge`: JSON replies, retries and disk cache of the LLM judges.
"""

from userlm_env.metrics.diversity import (
    EpisodeHistory,
    mean_pairwise_jaccard,
    pairwise_jaccard,
    unigram_difference,
)
from userlm_env.metrics.episode import (
    DemandDetector,
    EpisodeMetricsConfig,
    EpisodeView,
    LexicalDemandDetector,
    LLMDemandJudge,
    RoleBreakDetector,
    episode_metrics,
    pace,
)
from userlm_env.metrics.protocol import (
    Estimate,
    ProtocolConfig,
    degradation,
    intent_metrics,
    protocol_rows,
    run_scores,
    setting_metrics,
)
from userlm_env.metrics.shards import (
    LabelledTurn,
    LexicalShardMatcher,
    LLMJudgeShardMatcher,
    MatchScores,
    ShardMatcher,
    match_turns,
    matcher_scores,
)
from userlm_env.metrics.suite import (
    PROTOCOL,
    SUITE,
    MetricDeclaration,
    SimulatedEpisode,
    SuiteMetric,
    bootstrap_ci,
    compute_suite,
)

__all__ = [
    "PROTOCOL",
    "SUITE",
    "DemandDetector",
    "EpisodeHistory",
    "EpisodeMetricsConfig",
    "EpisodeView",
    "Estimate",
    "LLMDemandJudge",
    "LLMJudgeShardMatcher",
    "LabelledTurn",
    "LexicalDemandDetector",
    "LexicalShardMatcher",
    "MatchScores",
    "MetricDeclaration",
    "ProtocolConfig",
    "RoleBreakDetector",
    "ShardMatcher",
    "SimulatedEpisode",
    "SuiteMetric",
    "bootstrap_ci",
    "compute_suite",
    "degradation",
    "episode_metrics",
    "intent_metrics",
    "match_turns",
    "matcher_scores",
    "mean_pairwise_jaccard",
    "pace",
    "pairwise_jaccard",
    "protocol_rows",
    "run_scores",
    "setting_metrics",
    "unigram_difference",
]
