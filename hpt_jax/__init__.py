"""hpt_jax: Hybrid Post-Training and the Unified Policy Gradient Estimator in JAX.

Subpackages:
  upge      -- the four parts of the unified estimator as pure functions of arrays.
  models    -- Flax NNX causal LM (Qwen2/2.5/Math, Llama 3.x) with HF import/export.
  sampling  -- jitted rollout engine on the Flax LM.
  rewards   -- math answer verification, process-pool batch scoring.
  data      -- OpenR1-schema loaders, prompt templates, the built-in arithmetic task.
  hybrid    -- HPT's per-question gate, an (init, update) pair over a small state.
  training  -- the sharded train step, the loop, checkpoints.
  evaluation -- avg@k / pass@k, tables and plots.
"""

__version__ = "0.1.0"
