"""HPT's per-question gate: rollout correctness -> (α, β) -> how the question enters the batch.

Paper (arXiv 2509.04419, Alg. 1, Eq. 8-10): P = correct/n over the question's n rollouts,
α = f(P) = 1[P > γ], β = g(P) = 1[P ≤ γ], L = α·L_RL + β·L_SFT. The official code
(`mix_trainer.select_on_off_ada_balance`) compares the correct *count* with `switch_gate`,
so γ is accepted both as a fraction (P ≤ γ) and as a count (correct ≤ k).

Routing of one question:
  * α > 0: its n rollouts stay in the batch as RL rows, forming their own group (advantages from
    that group only), each row weighted by α;
  * β > 0: one demonstration row is added, on which the demonstration loss acts with weight β.
    What that loss is comes from `DemoLoss`: SFT (HPT), LUFFY-shaped off-policy RL (the OFF/ON
    ablation of §4.4) or both (Mix/ON, SFT·w_sft + off-policy·w_off).
The hard gate makes α, β binary (author reply in issue #7); `SoftGate` takes user functions
α = f(P), β = g(P), the generalisation the paper leaves open.

Everything here is host-side NumPy: the gate changes which rows exist, hence array shapes.
Letters: Q questions, n rollouts per question.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Tolerance of the fraction comparison P ≤ γ: P = c/n is compared as c ≤ γ·n, and γ·n is a
# float product (e.g. 0.1·30 = 3.0000000000000004); a rounding slack far below 1/n keeps
# "exactly at γ" on the SFT side as the code's integer comparison does.
_FRACTION_SLACK = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True)
class Threshold:
  """γ of the hard gate, either as a fraction of n or as a count of correct rollouts.

  Build with `Threshold.of_fraction(0.25)` or `Threshold.of_count(2)`; exactly one field is set.
  """

  fraction: float | None = None
  count: int | None = None

  def __post_init__(self):
    if (self.fraction is None) == (self.count is None):
      raise ValueError(f"Threshold needs exactly one of fraction/count, got fraction={self.fraction}, "
                       f"count={self.count}")
    if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
      raise ValueError(f"Threshold.fraction must lie in [0, 1], got {self.fraction}")
    if self.count is not None and (int(self.count) != self.count or self.count < 0):
      raise ValueError(f"Threshold.count must be a non-negative integer, got {self.count}")

  @classmethod
  def of_fraction(cls, gamma: float) -> Threshold:
    return cls(fraction=float(gamma))

  @classmethod
  def of_count(cls, k: int) -> Threshold:
    return cls(count=int(k))

  def at_or_below(self, correct: np.ndarray, num_rollouts: np.ndarray) -> np.ndarray:
    """[Q] bool: P ≤ γ (fraction) or correct ≤ k (count)."""
    if self.count is not None:
      return correct <= self.count
    return correct <= self.fraction * num_rollouts + _FRACTION_SLACK


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoLoss:
  """What acts on a demonstration row, as non-negative weights (multiplied by β).

  sft: token-mean NLL (HPT); off_policy: LUFFY-shaped off-policy RL with π_ref ≡ 1.
  """

  sft: float = 1.0
  off_policy: float = 0.0

  def __post_init__(self):
    if self.sft < 0 or self.off_policy < 0:
      raise ValueError(f"DemoLoss weights must be >= 0, got sft={self.sft}, off_policy={self.off_policy}")
    if self.sft == 0 and self.off_policy == 0:
      raise ValueError("DemoLoss needs a positive sft or off_policy weight")

  @classmethod
  def sft_only(cls) -> DemoLoss:
    """SFT/ON: HPT itself."""
    return cls(sft=1.0, off_policy=0.0)

  @classmethod
  def off_policy_only(cls) -> DemoLoss:
    """OFF/ON ablation: off-policy RL on the demonstration instead of SFT."""
    return cls(sft=0.0, off_policy=1.0)

  @classmethod
  def mix(cls, *, sft: float = 0.1, off_policy: float = 1.0) -> DemoLoss:
    """Mix/ON ablation; the paper's searched weights are SFT 0.1, off-policy 1.0 (Table 5)."""
    return cls(sft=sft, off_policy=off_policy)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardGate:
  """α = 1[P > γ], β = 1[P ≤ γ] (paper Eq. 9-10)."""

  threshold: Threshold
  demo: DemoLoss = DemoLoss()

  def coefficients(self, correct: np.ndarray, num_rollouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = self.threshold.at_or_below(correct, num_rollouts)
    return (~low).astype(np.float64), low.astype(np.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoftGate:
  """α = alpha_fn(P), β = beta_fn(P) with user functions of the solve rate P ∈ [0, 1].

  Both functions take and return [Q] float64 arrays; values must be finite and >= 0. A question
  with α > 0 and β > 0 contributes its rollouts *and* a demonstration row.
  """

  alpha_fn: Callable[[np.ndarray], np.ndarray]
  beta_fn: Callable[[np.ndarray], np.ndarray]
  demo: DemoLoss = DemoLoss()

  def coefficients(self, correct: np.ndarray, num_rollouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = correct / num_rollouts
    out = []
    for name, fn in (("alpha_fn", self.alpha_fn), ("beta_fn", self.beta_fn)):
      v = np.broadcast_to(np.asarray(fn(p), dtype=np.float64), p.shape).copy()
      if not np.all(np.isfinite(v)) or np.any(v < 0):
        bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
        raise ValueError(f"SoftGate.{name} must return finite values >= 0; bad questions {bad.tolist()}")
      out.append(v)
    return out[0], out[1]


Gate = HardGate | SoftGate


class GateDecision(NamedTuple):
  """Per-question routing, all [Q] NumPy arrays."""

  success_rate: np.ndarray  # float64, P = correct / n
  alpha: np.ndarray  # float64, weight of the RL rows
  beta: np.ndarray  # float64, weight of the demonstration row
  keep_rollouts: np.ndarray  # bool, α > 0: the n rollouts become RL rows of their own group
  add_demo: np.ndarray  # bool, β > 0: one demonstration row is added
  demo_sft_weight: np.ndarray  # float64, β · DemoLoss.sft
  demo_off_policy_weight: np.ndarray  # float64, β · DemoLoss.off_policy


def decide(gate: Gate, *, correct: np.ndarray, num_rollouts: np.ndarray | int) -> GateDecision:
  """Routes each question from its rollout correctness.

  Args:
    gate: a `HardGate` or `SoftGate`.
    correct: [Q] int, number of correct rollouts of each question.
    num_rollouts: [Q] int or one int n, rollouts drawn per question (>= 1).

  Returns:
    The `GateDecision`.
  """
  correct = np.asarray(correct)
  if correct.ndim != 1:
    raise ValueError(f"correct must be [Q], got shape {correct.shape}")
  n = np.broadcast_to(np.asarray(num_rollouts), correct.shape)
  if np.any(n < 1):
    raise ValueError(f"num_rollouts must be >= 1, bad questions {np.flatnonzero(n < 1).tolist()}")
  if np.any(correct < 0) or np.any(correct > n):
    bad = np.flatnonzero((correct < 0) | (correct > n))
    raise ValueError(f"correct must lie in [0, num_rollouts]; bad questions {bad.tolist()}")
  alpha, beta = gate.coefficients(correct, n)
  return GateDecision(
      success_rate=correct / n,
      alpha=alpha,
      beta=beta,
      keep_rollouts=alpha > 0,
      add_demo=beta > 0,
      demo_sft_weight=beta * gate.demo.sft,
      demo_off_policy_weight=beta * gate.demo.off_policy,
  )
