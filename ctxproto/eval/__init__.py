"""Offline context-compression evaluation: what a pipeline saves and what it costs.

``evaluate(pipelines, load_dataset("needle"))`` runs every item through the
uncompressed baseline and each pipeline and returns an ``EvalReport`` (tokens,
compression ratio, answer retention, answer log-probability, reader EM/F1,
latency); ``ctxproto eval`` is the same from the command line. See docs/eval.md.

Modules: ``dataset`` (interface, ``load_dataset``), ``jsonl``, ``needle``,
``chat_needle`` (+ ``conversations``, ``json_stream``, ``facts``), ``metrics``,
``logprob``, ``readers``, ``runner``, ``aggregate``, ``report``, ``plots``,
``row_log`` (rows as items finish, for ``--resume``), ``evaluate``. Heavy parts
(the LM, matplotlib) load on first use.
"""

from ctxproto.eval.dataset import (
    Dataset,
    DatasetOptions,
    DatasetProblem,
    EvalItem,
    load_dataset,
)
from ctxproto.eval.evaluate import EvaluationInterrupted, evaluate
from ctxproto.eval.logprob import AnswerLogprobScorer
from ctxproto.eval.metrics import best_subspan_em, normalize_answer, token_f1
from ctxproto.eval.readers import Reader, reader_from_spec
from ctxproto.eval.report import EvalReport
from ctxproto.eval.runner import BASELINE, Evaluator

__all__ = [
    "BASELINE",
    "AnswerLogprobScorer",
    "Dataset",
    "DatasetOptions",
    "DatasetProblem",
    "EvalItem",
    "EvalReport",
    "EvaluationInterrupted",
    "Evaluator",
    "Reader",
    "best_subspan_em",
    "evaluate",
    "load_dataset",
    "normalize_answer",
    "reader_from_spec",
    "token_f1",
]
