"""Per-device memory of every paper config on every suggested platform, from abstract shapes only.

  python experiments/paper/memory_table.py            # prints the Markdown table of README.md

Two peaks per run and platform (GiB per device), from `hpt_jax.models.memory.estimate_memory`
(parameter shapes via `nnx.eval_shape`, shardings by the model's rules table):

  train step: fp32 master params + fp32 grads + fp32 AdamW moments + the bf16 cast of the params
    the step computes with + activations of one micro-batch (rows_per_micro_batch rows of
    1,024 + 8,192 tokens, per-layer full remat, query-chunked attention, log-probs in chunks of
    `loss.logprob_chunk` positions);
  rollout: the resident train state (params + AdamW moments; no grads) + the bf16 KV cache of the
    whole rollout batch (128 prompts x 8 rows, 9,216 slots each, all sampled at once as the sampler
    does) + the prefill activations of a 1,024-token prompt.

Nothing is allocated; the 7B/8B models are never materialised.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax.numpy as jnp

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
import paper_recipe as r  # noqa: E402

from hpt_jax.models import DTypePolicy, memory  # noqa: E402
from hpt_jax.training import config as c  # noqa: E402

GIB = memory.GIB


@dataclasses.dataclass(frozen=True)
class Peaks:
  """GiB per device."""
  state: float  # params + grads + AdamW moments (fp32)
  activations: float  # bf16 param cast + one micro-batch's activations
  train: float
  kv_cache: float
  rollout: float


def peaks(config: c.TrainConfig, *, rollout_chunks: int = 1) -> Peaks:
  """The two peaks of `config` on its own mesh (see the module docstring).

  Args:
    config: a paper config (its `model.config` preset stands in for the checkpoint's config.json).
    rollout_chunks: sample the rollout batch in this many sequential chunks (1 = all at once, as
      the sampler does today).
  """
  model = c.resolve_model_config(dataclasses.replace(config.model, hf_dir=None))
  mesh = {"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor}
  seq = config.data.max_prompt_length + config.data.max_response_length
  chunk = max(p.loss.logprob_chunk for p in config.phases)
  master = model.replace(dtype_policy=DTypePolicy.FLOAT32)
  fp32 = memory.estimate_memory(master, mesh_shape=mesh, micro_batch=config.batch.rows_per_micro_batch,
                                seq_len=seq, optimizer_dtype=jnp.float32)
  compute = memory.estimate_memory(model, mesh_shape=mesh, micro_batch=config.batch.rows_per_micro_batch,
                                   seq_len=seq, logits_chunk=chunk)
  state = fp32.params + fp32.grads + fp32.optimizer
  activations = compute.params + compute.activations  # compute.params: the bf16 cast
  rollout_rows = config.batch.prompts_per_step * config.sampling.rollouts_per_prompt // rollout_chunks
  sample = memory.estimate_memory(model, mesh_shape=mesh, micro_batch=rollout_rows,
                                  seq_len=config.data.max_prompt_length, train=False,
                                  logits_chunk=1, kv_cache_length=seq)
  rollout = fp32.params + fp32.optimizer + sample.kv_cache + sample.activations
  return Peaks(state=state / GIB, activations=activations / GIB, train=(state + activations) / GIB,
               kv_cache=sample.kv_cache / GIB, rollout=rollout / GIB)


RUNS = (
    ("qwen25_math_7b_hpt", r.Base.QWEN_7B, r.Method.HPT),
    ("qwen25_math_7b_{sft,grpo,sft_grpo,luffy,srft}", r.Base.QWEN_7B, r.Method.GRPO),
    ("qwen25_math_1_5b_hpt", r.Base.QWEN_1_5B, r.Method.HPT),
    ("llama31_8b_hpt", r.Base.LLAMA_8B, r.Method.HPT),
)


def table() -> str:
  lines = ["| config | platform (mesh) | micro-batch rows | state | activations | train-step peak | "
           "rollout KV | rollout peak | rollout peak, 4 chunks | fits? |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, base, method in RUNS:
    for key, platform in r.MESHES.items():
      config = r.recipe(base, method, platform=key)
      p = peaks(config)
      chunked = peaks(config, rollout_chunks=4)
      m = config.mesh
      worst = max(p.train, p.rollout)
      verdict = "yes" if worst <= 0.9 * platform.hbm_gib else (
          "train step yes; rollout only in 4 chunks" if max(p.train, chunked.rollout) <= 0.9 * platform.hbm_gib
          else "NO")
      lines.append(
          f"| {name} | {key}: {platform.name} (data {m.data} × fsdp {m.fsdp} × tensor {m.tensor}) | "
          f"{config.batch.rows_per_micro_batch} | {p.state:.1f} | {p.activations:.1f} | {p.train:.1f} | "
          f"{p.kv_cache:.1f} | {p.rollout:.1f} | {chunked.rollout:.1f} | {verdict} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(table())
