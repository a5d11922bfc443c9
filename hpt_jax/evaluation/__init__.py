"""Evaluation: avg@k / pass@k, benchmark loaders, the resumable evaluator, Table 2/4 and Fig. 2 outputs.

The real sampler backend, grader and HF assembly live in submodules so that importing this package stays
light (no model, sampler or sympy imports): `evaluation.backends.SamplerBackend`,
`evaluation.grading.RewardGrader`, `evaluation.build.{load_hf_model, build_evaluator, make_render, PromptStyle}`.
"""

from hpt_jax.evaluation.benchmarks import BENCHMARKS
from hpt_jax.evaluation.benchmarks import BenchmarkSpec
from hpt_jax.evaluation.benchmarks import Grading
from hpt_jax.evaluation.benchmarks import Problem
from hpt_jax.evaluation.benchmarks import Protocol
from hpt_jax.evaluation.benchmarks import find_benchmark_file
from hpt_jax.evaluation.benchmarks import get_benchmark
from hpt_jax.evaluation.benchmarks import load_benchmark
from hpt_jax.evaluation.compare import ComparisonPaths
from hpt_jax.evaluation.compare import compare_runs
from hpt_jax.evaluation.evaluator import Backend
from hpt_jax.evaluation.evaluator import BenchmarkJob
from hpt_jax.evaluation.evaluator import Completion
from hpt_jax.evaluation.evaluator import Evaluator
from hpt_jax.evaluation.evaluator import Grader
from hpt_jax.evaluation.evaluator import ReportPaths
from hpt_jax.evaluation.evaluator import make_job
from hpt_jax.evaluation.evaluator import write_report
from hpt_jax.evaluation.metrics import BenchmarkScore
from hpt_jax.evaluation.metrics import avg_at_k
from hpt_jax.evaluation.metrics import average_over_benchmarks
from hpt_jax.evaluation.metrics import average_pass_at_k
from hpt_jax.evaluation.metrics import pass_at_k
from hpt_jax.evaluation.metrics import pass_at_k_curve
from hpt_jax.evaluation.metrics import score_benchmark
from hpt_jax.evaluation.report import ExclusiveSolves
from hpt_jax.evaluation.report import exclusive_solves
from hpt_jax.evaluation.report import exclusive_solves_table
from hpt_jax.evaluation.report import plot_pass_at_k
from hpt_jax.evaluation.report import results_table
from hpt_jax.evaluation.report import write_results_table
from hpt_jax.evaluation.results import ProblemResult
from hpt_jax.evaluation.results import ResultWriter
from hpt_jax.evaluation.results import load_run
from hpt_jax.evaluation.results import read_results
from hpt_jax.evaluation.results import score_results

__all__ = [
    "BENCHMARKS", "Backend", "BenchmarkJob", "BenchmarkScore", "BenchmarkSpec", "ComparisonPaths",
    "Completion", "Evaluator",
    "ExclusiveSolves", "Grader", "Grading", "Problem", "ProblemResult", "Protocol", "ReportPaths",
    "ResultWriter", "avg_at_k", "average_over_benchmarks", "average_pass_at_k", "compare_runs", "exclusive_solves", "exclusive_solves_table",
    "find_benchmark_file", "get_benchmark", "load_benchmark", "load_run", "make_job", "pass_at_k",
    "pass_at_k_curve", "plot_pass_at_k", "read_results", "results_table", "score_benchmark",
    "score_results", "write_report", "write_results_table",
]
