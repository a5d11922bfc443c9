"""HPT's per-question gate (α, β from the solve rate), its state, and routing into training rows."""

from hpt_jax.hybrid.gate import DemoLoss, Gate, GateDecision, HardGate, SoftGate, Threshold, decide
from hpt_jax.hybrid.objective import AdvantageEstimator, LossConfig, LossMode
from hpt_jax.hybrid.routing import route
from hpt_jax.hybrid.state import GateState, GateTransform, gate_metrics, make_gate

__all__ = [
    "AdvantageEstimator",
    "LossConfig",
    "LossMode",
    "DemoLoss",
    "Gate",
    "GateDecision",
    "GateState",
    "GateTransform",
    "HardGate",
    "SoftGate",
    "Threshold",
    "decide",
    "gate_metrics",
    "make_gate",
    "route",
]
