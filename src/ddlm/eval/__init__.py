"""Measuring models and their samples: likelihood bounds, judges, diversity, speed."""

from ddlm.eval.diversity import distinct_n, repetition_rate, unigram_entropy
from ddlm.eval.judge import DDLMJudge, HFJudge, Judge, default_judge, load_judge
from ddlm.eval.likelihood import Likelihood, evaluate_likelihood, left_to_right_likelihood

__all__ = [
    "DDLMJudge", "HFJudge", "Judge", "Likelihood", "default_judge", "distinct_n", "evaluate_likelihood",
    "left_to_right_likelihood", "load_judge", "repetition_rate", "unigram_entropy",
]
