"""The offline, kernel-aware pattern search: ``mcompile search`` and :func:`search`.

An offline tool beside the runtime: it uses the backend (capture mode), the patterns' index
builders and the database only through their public names, and nothing the backend runs at
compile or call time imports it. The pipeline is described in ``pipeline``; the pieces:
``candidates`` (sizing each pattern to cost levels), ``scoring`` (exact softmax on captured
q/k/v), ``allocation`` (one candidate per head under the budget), ``laws`` (budgets as laws
of the length), ``report`` (tables and plots) and ``cli`` (``mcompile search``).
"""
from .pipeline import (BLOCK_SIZE, COSTS, DEFAULT_COST, DEFAULT_SCORING, KNOWN_NAMES, SCORINGS, SearchConfig,
                       SearchResult, SearchScores, attention_scale, build_database, build_indexes,
                       calibration_prompts, capture_prompts, choose, command_line, comparisons, model_identity,
                       pattern_mask, plan_metrics, score_capture, score_sample, search, select, uniform_choice)

__all__ = [
    "BLOCK_SIZE", "COSTS", "DEFAULT_COST", "DEFAULT_SCORING", "KNOWN_NAMES", "SCORINGS", "SearchConfig",
    "SearchResult", "SearchScores", "attention_scale", "build_database", "build_indexes", "calibration_prompts",
    "capture_prompts", "choose", "command_line", "comparisons", "model_identity", "pattern_mask", "plan_metrics",
    "score_capture", "score_sample", "search", "select", "uniform_choice",
]
