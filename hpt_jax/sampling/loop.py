"""The jitted rollout loop: prefill a left-padded prompt batch, then decode with `lax.while_loop`.

The loop is a pure function of a `DecodeModel` (anything with `init_cache` and a cached forward that
returns last-position logits), so it is tested with fake models and runs the Flax `CausalLM` through
`hpt_jax.sampling.lm.CausalLMDecoder`.

Static shapes: the prompt length P and the response length T are bucket sizes, and the KV cache is
preallocated at S = P + T slots. Everything that varies between batches of one bucket (the tokens, the
number of real prompt tokens, `max_new_tokens`, the seed, the EOS ids) is traced data, so one program
per (batch, P, T, strategy, num_samples) serves the whole run instead of one per batch.

Letters: B rows (prompts x samples), P prompt bucket, T response bucket, S = P + T, V vocab.
"""

import enum
from typing import Any, Protocol

import chex
import flax.struct
import jax
import jax.numpy as jnp

from hpt_jax.sampling.strategies import Strategy
from hpt_jax.typing import Array, PRNGKey

Cache = Any  # a pytree owned by the model; the loop only threads it through


class DecodeModel(Protocol):
  """The model side of the loop (must be hashable: it is a static argument of `jax.jit`)."""

  def init_cache(self, *, batch: int, length: int) -> Cache:
    """An empty cache with `length` slots whose write index is 0."""
    ...

  def __call__(
      self, params: Any, tokens: Array, *, positions: Array, attention_mask: Array, cache: Cache
  ) -> tuple[Array, Cache]:
    """Writes `tokens` [B, T'] at the cache's index and returns ([B, V] float32 logits of the last
    position, the cache advanced by T')."""
    ...

  # Optional: `repeat_cache(cache, n) -> cache` with every row repeated n times (adjacent). A model
  # that has it gets each prompt prefilled once for its n samples; one without it prefills n copies.
  # Optional: `loop_params(params) -> params'`, called once before the prefill; the model is then
  # called with params' (e.g. weights re-laid-out once instead of in every step of the loop).
  # Optional: `grow_cache(cache, length) -> cache` with `length` slots (the new ones empty) and
  # `decode_phases: int`: the decode loop then runs in up to that many phases, each on a cache just
  # long enough for its steps (see `phase_ends`), so attention does not read slots not yet written.
  # Optional: `packs_prefill = True`: the prefill call then gets `prefill_tokens=R` (static, at least
  # the prompt batch's real token count) and may skip padded prompt slots.


def _repeat_cache_fn(model: DecodeModel):
  return getattr(model, "repeat_cache", None)


# A phase shorter than this saves less attention work than its cache copy and compile time cost.
MIN_PHASE_STEPS = 16
# Phase ends are rounded up to this many steps (cache lengths stay multiples of it when P is).
PHASE_ALIGN = 8


def phase_ends(response_len: int, phases: int) -> tuple[int, ...]:
  """The response columns at which decode phases end: phase i produces columns [ends[i-1], ends[i]).

  The decode step that produces column j feeds the token at cache slot P + j - 1 and attends slots
  [0, P + j), so phase i runs on a cache of P + ends[i] slots. The ends split T into about equal
  phases of at least `MIN_PHASE_STEPS` columns, rounded up to multiples of `PHASE_ALIGN`; the last
  end is T (the full cache).

  Args:
    response_len: T >= 1.
    phases: the largest number of phases wanted (>= 1).

  Returns:
    Strictly increasing ends, the last one T.
  """
  if phases < 1:
    raise ValueError(f"decode_phases must be >= 1, got {phases}")
  n = max(1, min(phases, response_len // MIN_PHASE_STEPS))
  align = lambda x: min(response_len, -(-x // PHASE_ALIGN) * PHASE_ALIGN)
  ends = sorted({align(-(-response_len * i // n)) for i in range(1, n + 1)})
  return tuple(ends)


def _decode_phases(model: DecodeModel, response_len: int) -> tuple[int, ...]:
  """The model's phase ends for T = response_len ((T,) when it cannot grow its cache)."""
  if getattr(model, "grow_cache", None) is None:
    return (response_len,)
  return phase_ends(response_len, getattr(model, "decode_phases", 1))


class FinishReason(enum.IntEnum):
  """Why a row stopped (stored as int32 in `SampleOutput.finish_reason`)."""

  EOS = 0  # emitted one of the EOS ids (kept in the response, mask 1)
  LENGTH = 1  # reached max_new_tokens without EOS


@flax.struct.dataclass
class SampleOutput:
  """Per-row rollout results. Row r is sample `sample_ids[r]` of prompt `prompt_ids[r]`."""

  prompt_tokens: Array  # [B, P] int32, left-padded with pad_id
  prompt_mask: Array  # [B, P] bool, True = real prompt token
  tokens: Array  # [B, T] int32 response, pad_id after the first EOS / past max_new_tokens
  mask: Array  # [B, T] int32, 1 up to and including the first EOS, 0 after
  logprobs: Array  # [B, T] float32 log softmax(logits / temperature)[token]; 0 where mask == 0
  sampling_logprobs: Array  # [B, T] float32 log-prob under the sampling distribution; 0 where mask == 0
  finish_reason: Array  # [B] int32 FinishReason
  lengths: Array  # [B] int32 number of response tokens (= mask.sum(-1))
  prompt_ids: Array  # [B] int32
  sample_ids: Array  # [B] int32
  num_steps: Array  # [] int32 response columns the loop ran (< T when every row stopped early)


@flax.struct.dataclass
class _LoopState:
  step: Array  # [] int32: response tokens produced so far (the next one goes to column `step`)
  done: Array  # [B] bool: the row emitted EOS or reached max_new_tokens
  eos: Array  # [B] bool: the row emitted EOS
  last_token: Array  # [B] int32: the token to feed next
  next_position: Array  # [B] int32: RoPE position of `last_token`
  tokens: Array  # [B, T] int32
  logprobs: Array  # [B, T] float32
  sampling_logprobs: Array  # [B, T] float32
  cache: Cache


def row_keys(seed: Array, prompt_ids: Array, sample_ids: Array) -> PRNGKey:
  """One key per row from (seed, prompt id, sample index), independent of batch composition.

  Args:
    seed: [] int.
    prompt_ids: [B] int, a stable id of each row's prompt (e.g. its dataset index).
    sample_ids: [B] int, the sample index within the prompt's group.

  Returns:
    [B] typed PRNG keys.
  """
  chex.assert_rank([prompt_ids, sample_ids], 1)
  base = jax.random.key(seed)

  def one(p, s):
    return jax.random.fold_in(jax.random.fold_in(base, p), s)

  return jax.vmap(one)(prompt_ids, sample_ids)


def left_pad_positions(mask: Array) -> Array:
  """RoPE positions of a left-padded batch: cumsum(mask) - 1, clipped to 0 on the padding.

  Args:
    mask: [B, P] bool.

  Returns:
    [B, P] int32.
  """
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def _token_logprob(logits: Array, tokens: Array) -> Array:
  """log_softmax(logits)[token] per row without the [B, V] log_softmax: [B, V] f32, [B] ids -> [B]."""
  picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def _record(state: _LoopState, logits: Array, *, keys: Array, strategy: Strategy, eos_ids: Array,
            pad_id: int, max_new_tokens: Array) -> _LoopState:
  """Samples response column `state.step` from `logits` [B, V] and updates the done flags."""
  step = state.step
  sampling = strategy.sampling_logits(logits)  # [B, V]
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
  token = strategy.choose(sampling, step_keys)  # [B]
  # In float32 (the strategies return float32) for 1e-4 agreement with the trainer's log_softmax.
  logp = _token_logprob(strategy.plain_logits(logits), token)
  sampling_logp = _token_logprob(sampling, token)
  live = ~state.done  # rows still generating write this column
  hit_eos = live & jnp.isin(token, eos_ids)
  eos = state.eos | hit_eos
  done = state.done | hit_eos | (step + 1 >= max_new_tokens)
  return state.replace(
      step=step + 1,
      done=done,
      eos=eos,
      last_token=token,
      tokens=state.tokens.at[:, step].set(jnp.where(live, token, pad_id)),
      logprobs=state.logprobs.at[:, step].set(jnp.where(live, logp, 0.0)),
      sampling_logprobs=state.sampling_logprobs.at[:, step].set(jnp.where(live, sampling_logp, 0.0)),
  )


def generate(
    model: DecodeModel,
    params: Any,
    prompt_tokens: Array,
    prompt_mask: Array,
    keys: PRNGKey,
    *,
    strategy: Strategy,
    eos_ids: Array,
    pad_id: int,
    max_new_tokens: Array,
    response_len: int,
    num_samples: int = 1,
    prefill_tokens: int | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array]:
  """Samples up to `max_new_tokens` tokens for each row of a left-padded prompt batch.

  Prefill writes the P prompt slots of a cache of S = P + response_len slots and samples response
  token 0 from the last prompt position (always a real token under left padding). The while loop then
  feeds the previous token at slot P + t - 1 and samples token t, until every row has emitted an EOS id
  or `max_new_tokens` tokens. Finished rows keep being computed (static batch) but write pad_id / 0.
  A model with `grow_cache` and `decode_phases` > 1 gets the loop split at `phase_ends`: the cache
  starts shorter and grows between phases, so decode attention reads only slots that can be filled.

  With `num_samples` n > 1 each prompt row stands for n adjacent output rows: it is prefilled ONCE and
  its cache and last logits are repeated n times (when the model has `repeat_cache`; otherwise the
  prompts are repeated before the prefill). The n copies of a prompt's prefill are identical, so this
  only removes (n - 1) / n of the prefill work.

  Args:
    model: the cached forward (static).
    params: the model's parameter pytree, used as is (no copy; may be sharded).
    prompt_tokens: [Bp, P] int32, left-padded.
    prompt_mask: [Bp, P] bool, True = real token; every row needs at least one.
    keys: [B] per-row PRNG keys, B = Bp * num_samples (see `row_keys`); token t of a row uses
      fold_in(key, t).
    strategy: a `Strategy` (static).
    eos_ids: [E] int32, any of which ends a row.
    pad_id: filler for finished rows (static).
    max_new_tokens: [] int32 in [1, response_len] (traced: changing it does not recompile).
    response_len: T, the response bucket (static).
    num_samples: n output rows per prompt row (static).
    prefill_tokens: for a model with `packs_prefill`: R >= the number of True entries of
      `prompt_mask` (static; the caller checks it); None = the model's plain prefill.

  Returns:
    tokens [B, T] int32, mask [B, T] int32, logprobs [B, T] f32, sampling_logprobs [B, T] f32,
    finish_reason [B] int32, num_steps [] int32.
  """
  chex.assert_rank([prompt_tokens, prompt_mask], 2)
  chex.assert_equal_shape([prompt_tokens, prompt_mask])
  chex.assert_rank(eos_ids, 1)
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  chex.assert_axis_dimension(keys, 0, prompt_tokens.shape[0] * num_samples)
  max_new_tokens = jnp.clip(jnp.asarray(max_new_tokens, jnp.int32), 1, response_len)
  prompt_mask = prompt_mask.astype(jnp.bool_)
  repeat_cache = _repeat_cache_fn(model) if num_samples > 1 else None
  if num_samples > 1 and repeat_cache is None:
    prompt_tokens, prompt_mask = (jnp.repeat(x, num_samples, axis=0) for x in (prompt_tokens, prompt_mask))
  prefill_rows, prompt_len = prompt_tokens.shape
  loop_params = getattr(model, "loop_params", None)
  if loop_params is not None:
    params = loop_params(params)

  ends = _decode_phases(model, response_len)
  cache = model.init_cache(batch=prefill_rows, length=prompt_len + ends[0])
  packed = {} if prefill_tokens is None else {"prefill_tokens": prefill_tokens}
  logits, cache = model(
      params, prompt_tokens, positions=left_pad_positions(prompt_mask), attention_mask=prompt_mask,
      cache=cache, **packed)
  if repeat_cache is not None:
    logits = jnp.repeat(logits, num_samples, axis=0)
    cache = repeat_cache(cache, num_samples)
    prompt_mask = jnp.repeat(prompt_mask, num_samples, axis=0)
  batch = prompt_mask.shape[0]
  zeros_f = jnp.zeros((batch, response_len), jnp.float32)
  state = _LoopState(
      step=jnp.array(0, jnp.int32),
      done=jnp.zeros((batch,), jnp.bool_),
      eos=jnp.zeros((batch,), jnp.bool_),
      last_token=jnp.zeros((batch,), jnp.int32),
      next_position=jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32),
      tokens=jnp.full((batch, response_len), pad_id, jnp.int32),
      logprobs=zeros_f,
      sampling_logprobs=zeros_f,
      cache=cache,
  )
  record_kw = dict(keys=keys, strategy=strategy, eos_ids=eos_ids, pad_id=pad_id,
                   max_new_tokens=max_new_tokens)
  state = _record(state, logits, **record_kw)

  def body(s: _LoopState) -> _LoopState:
    step_logits, new_cache = model(
        params, s.last_token[:, None], positions=s.next_position[:, None],
        attention_mask=jnp.ones((batch, 1), jnp.bool_), cache=s.cache)
    s = s.replace(cache=new_cache, next_position=s.next_position + 1)
    return _record(s, step_logits, **record_kw)

  for phase, end in enumerate(ends):
    if phase:  # the next phase's cache: the written slots copied, `end - previous end` empty ones
      state = state.replace(cache=model.grow_cache(state.cache, prompt_len + end))
    # Static `end`: each phase is its own loop on its own cache length.
    cond = lambda s, end=end: ~jnp.all(s.done) & (s.step < end)
    state = jax.lax.while_loop(cond, body, state)
  # A column was written by a live row iff it is at or before the row's EOS and within max_new_tokens.
  columns = jnp.arange(response_len)[None, :]
  is_eos = jnp.isin(state.tokens, eos_ids)
  first_eos = jnp.where(state.eos, jnp.argmax(is_eos, axis=-1), response_len)  # [B]
  mask = (columns <= first_eos[:, None]) & (columns < max_new_tokens)
  finish = jnp.where(state.eos, int(FinishReason.EOS), int(FinishReason.LENGTH)).astype(jnp.int32)
  return (state.tokens, mask.astype(jnp.int32), state.logprobs, state.sampling_logprobs, finish,
          state.step)


def repeat_prompts(prompt_tokens: Array, prompt_mask: Array, prompt_ids: Array, *,
                   num_samples: int) -> tuple[Array, Array, Array, Array]:
  """Repeats each prompt row `num_samples` times (group members are adjacent, as GRPO expects).

  Args:
    prompt_tokens: [Bp, P] int32.
    prompt_mask: [Bp, P] bool.
    prompt_ids: [Bp] int32.
    num_samples: n >= 1.

  Returns:
    tokens [Bp*n, P], mask [Bp*n, P], prompt_ids [Bp*n], sample_ids [Bp*n] (0..n-1 within a group).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  rep = lambda x: jnp.repeat(x, num_samples, axis=0)
  sample_ids = jnp.tile(jnp.arange(num_samples, dtype=jnp.int32), prompt_ids.shape[0])
  return rep(prompt_tokens), rep(prompt_mask), rep(prompt_ids), sample_ids


def sample(
    model: DecodeModel,
    params: Any,
    prompt_tokens: Array,
    prompt_mask: Array,
    prompt_ids: Array,
    *,
    seed: Array,
    eos_ids: Array,
    max_new_tokens: Array,
    strategy: Strategy,
    num_samples: int,
    response_len: int,
    pad_id: int,
    prefill_tokens: int | None = None,
) -> SampleOutput:
  """`num_samples` rollouts per prompt: repeat rows, derive per-row keys, `generate`.

  Jit this with static `model, strategy, num_samples, response_len, pad_id` (see `jit_sample`).

  Args:
    model, params: as in `generate`.
    prompt_tokens: [Bp, P] int32 left-padded prompts.
    prompt_mask: [Bp, P] bool.
    prompt_ids: [Bp] int32 stable prompt ids (key derivation).
    seed: [] int.
    eos_ids: [E] int32.
    max_new_tokens: [] int32 in [1, response_len].
    strategy, num_samples, response_len, pad_id: static.
    prefill_tokens: static, see `generate`.

  Returns:
    `SampleOutput` with B = Bp * num_samples rows, grouped by prompt.
  """
  chex.assert_rank(prompt_ids, 1)
  chex.assert_axis_dimension(prompt_ids, 0, prompt_tokens.shape[0])
  prompt_mask = prompt_mask.astype(jnp.bool_)
  tokens, mask, prompt_ids, sample_ids = repeat_prompts(
      prompt_tokens, prompt_mask, prompt_ids.astype(jnp.int32), num_samples=num_samples)
  keys = row_keys(seed, prompt_ids, sample_ids)
  # The un-repeated prompts go in: `generate` prefills each once and repeats its cache.
  resp, resp_mask, logp, sampling_logp, finish, num_steps = generate(
      model, params, prompt_tokens, prompt_mask, keys, strategy=strategy, eos_ids=eos_ids, pad_id=pad_id,
      max_new_tokens=max_new_tokens, response_len=response_len, num_samples=num_samples,
      prefill_tokens=prefill_tokens)
  return SampleOutput(
      prompt_tokens=tokens, prompt_mask=mask, tokens=resp, mask=resp_mask, logprobs=logp,
      sampling_logprobs=sampling_logp, finish_reason=finish, lengths=resp_mask.sum(-1),
      prompt_ids=prompt_ids, sample_ids=sample_ids, num_steps=num_steps)


jit_sample = jax.jit(
    sample, static_argnames=("model", "strategy", "num_samples", "response_len", "pad_id",
                             "prefill_tokens"))
"""`sample` under `jax.jit`; `jit_sample._cache_size()` counts the compiled programs."""
