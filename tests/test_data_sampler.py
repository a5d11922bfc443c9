"""The resumable sampler: per-epoch permutations, drop_last, exact resume, host sharding."""

import json

import numpy as np
import pytest

from hpt_jax.data import EpochSampler


def take(sampler, n):
  return [next(sampler) for _ in range(n)]


def test_each_epoch_is_a_fresh_permutation_with_drop_last():
  n, b = 23, 5  # 4 batches per epoch, 3 examples dropped each epoch.
  s = EpochSampler(num_examples=n, batch_size=b, seed=47)
  assert s.steps_per_epoch == 4
  epochs = [np.concatenate(take(s, 4)) for _ in range(3)]
  for e in epochs:
    assert len(e) == 20 and len(set(e.tolist())) == 20 and e.min() >= 0 and e.max() < n
  assert not np.array_equal(epochs[0], epochs[1])
  # Reference: epoch e visits numpy's permutation seeded by (seed, e), first 20 entries.
  for k, e in enumerate(epochs):
    np.testing.assert_array_equal(e, np.random.default_rng([47, k]).permutation(n)[:20])
  assert s.state_dict()["epoch"] == 3 and s.state_dict()["step"] == 0


def test_same_seed_same_order_different_seed_different_order():
  a = take(EpochSampler(num_examples=50, batch_size=8, seed=1), 6)
  b = take(EpochSampler(num_examples=50, batch_size=8, seed=1), 6)
  c = take(EpochSampler(num_examples=50, batch_size=8, seed=2), 6)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_resume_after_save_restore_continues_at_the_same_position():
  reference = EpochSampler(num_examples=37, batch_size=4, seed=3)
  expected = take(reference, 20)  # crosses two epoch boundaries (9 batches per epoch).
  s = EpochSampler(num_examples=37, batch_size=4, seed=3)
  head = take(s, 11)
  saved = json.loads(json.dumps(s.state_dict()))  # what a checkpoint stores
  assert saved == {"seed": 3, "epoch": 1, "step": 2, "num_examples": 37, "global_batch_size": 4}
  restored = EpochSampler.from_state(saved, batch_size=4, num_examples=37)
  tail = take(restored, 9)
  for got, want in zip(head + tail, expected):
    np.testing.assert_array_equal(got, want)


def test_host_shards_partition_the_global_batch():
  n, per_host, hosts = 50, 3, 4
  single = EpochSampler(num_examples=n, batch_size=per_host * hosts, seed=5)
  shards = [EpochSampler(num_examples=n, batch_size=per_host, seed=5, process_index=p, process_count=hosts)
            for p in range(hosts)]
  for _ in range(9):  # 4 batches per epoch: crosses epochs.
    global_batch = next(single)
    parts = [next(s) for s in shards]
    assert all(len(p) == per_host for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), global_batch)
    assert len(set(np.concatenate(parts).tolist())) == per_host * hosts  # disjoint
  assert len({json.dumps(s.state_dict()) for s in shards}) == 1  # one state for all hosts


def test_restore_checks_sizes():
  s = EpochSampler(num_examples=40, batch_size=4, seed=0, process_count=2)
  state = s.state_dict()
  with pytest.raises(ValueError, match="global batch"):
    EpochSampler.from_state(state, batch_size=4, process_count=1)
  with pytest.raises(ValueError, match="40 examples"):
    EpochSampler.from_state(state, batch_size=4, process_count=2, num_examples=41)
  with pytest.raises(KeyError, match="epoch"):
    EpochSampler.from_state({"seed": 0}, batch_size=4)
  with pytest.raises(ValueError, match="smaller than one global batch"):
    EpochSampler(num_examples=5, batch_size=4, seed=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    EpochSampler(num_examples=50, batch_size=4, seed=0, process_index=2, process_count=2)
