"""Metrics of simulated conversations: shard matching, coverage, pace and diversity."""

from userlm_env.metrics.shards import LexicalShardMatcher, ShardMatcher

__all__ = ["LexicalShardMatcher", "ShardMatcher"]
