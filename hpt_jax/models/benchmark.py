"""Micro-benchmark of the model on the current backend: `python -m hpt_jax.models.benchmark`.

Reports, for a preset (default `tiny`, random weights): jitted forward throughput (tokens/s) on a
[batch, length] batch, the latency of one cached decoding step, and the HF export + import time (after a warm-up
export, which pays the one-off import of transformers' config modules).
Each figure is the median of `--repeats` runs after one warm-up (compile) run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpt_jax.models import hf_io, init_cache, presets
from hpt_jax.models.testing import padded_batch, random_model


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up: compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def run(*, preset: str, batch: int, length: int, cache_length: int, repeats: int) -> dict:
  config = presets.get(preset)
  model = random_model(config, seed=0)
  graphdef, params = nnx.split(model)
  tokens, positions, mask = (jnp.asarray(x) for x in padded_batch(
      np.random.default_rng(0), vocab_size=config.vocab_size, length=length,
      left_pad=[0] * batch, right_pad=[0] * batch))

  @jax.jit
  def forward(params, tokens, positions, mask):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens, positions=positions, attention_mask=mask)
    return model.logits(hidden)

  @jax.jit
  def decode_step(params, cache):
    model = nnx.merge(graphdef, params)
    one = jnp.ones((batch, 1), jnp.int32)
    hidden, cache = model(one, positions=one * 0 + cache.index, attention_mask=one.astype(bool),
                          cache=cache)
    return model.logits(hidden), cache

  forward_s = _median_seconds(lambda: forward(params, tokens, positions, mask), repeats)
  cache = init_cache(config, batch=batch, length=cache_length)
  step_s = _median_seconds(lambda: decode_step(params, cache)[0], repeats)
  with tempfile.TemporaryDirectory() as tmp:
    # Warm-up export: the first one pays for importing transformers' config modules (seconds).
    hf_io.save_pretrained(model, f"{tmp}/warmup")
    start = time.perf_counter()
    hf_io.save_pretrained(model, tmp)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(nnx.state(hf_io.load_pretrained(tmp)))
    import_s = time.perf_counter() - start
  return dict(preset=preset, backend=jax.default_backend(), batch=batch, length=length,
              forward_tokens_per_s=round(batch * length / forward_s),
              decode_step_ms=round(1e3 * step_s, 2), cache_length=cache_length,
              hf_export_s=round(export_s, 2), hf_import_s=round(import_s, 2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--cache_length", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(json.dumps(run(preset=args.preset, batch=args.batch, length=args.length,
                       cache_length=args.cache_length, repeats=args.repeats)))


if __name__ == "__main__":
  main()
