"""Checkpointer: round trip (plain and sharded), retention policy, and crash safety under SIGKILL."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax.training.checkpoint import BestMode, BestTracker, CheckpointConfig, Checkpointer
from hpt_jax.training.overrides import ConfigError


def _state(seed):
  rng = np.random.default_rng(seed)
  return {
      "params": {"w": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
                 "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)},
      "opt": {"count": jnp.asarray(seed, jnp.int32)},
      "gate": {"sft": jnp.asarray([seed, 2 * seed], jnp.int32)},
  }


def test_round_trip_restores_arrays_and_host_dict(tmp_path):
  ckpt = Checkpointer(tmp_path, config=CheckpointConfig(async_save=True))
  assert ckpt.latest_step() is None
  for step in (1, 2):
    ckpt.save(step, state=_state(step), host={"sampler": {"epoch": 0, "position": 4 * step},
                                              "rng": [0, step]})
  ckpt.close()
  # A new manager (as after a restart) sees the latest step and restores it exactly.
  ckpt = Checkpointer(tmp_path, config=CheckpointConfig())
  assert ckpt.latest_step() == 2
  state, host = ckpt.restore(like=_state(0))
  expected = _state(2)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, expected)
  assert host == {"sampler": {"epoch": 0, "position": 8}, "rng": [0, 2]}
  old, host1 = ckpt.restore(1, like=_state(0))
  np.testing.assert_array_equal(old["params"]["w"], _state(1)["params"]["w"])
  assert host1["sampler"]["position"] == 4
  ckpt.close()


def test_sharded_restore_places_arrays_with_target_sharding(tmp_path):
  mesh = jax.make_mesh((4, 2), ("data", "tensor"))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
  value = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
  sharded = jax.device_put(value, spec)
  ckpt = Checkpointer(tmp_path, config=CheckpointConfig(async_save=False))
  ckpt.save(3, state={"w": sharded}, host={})
  like = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=spec)}
  restored, _ = ckpt.restore(like=like)
  ckpt.close()
  assert restored["w"].sharding == spec
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(value))


@pytest.mark.parametrize("mode", [BestMode.MAX, BestMode.MIN])
def test_retention_keeps_last_k_and_best(tmp_path, mode):
  cfg = CheckpointConfig(keep_last=2, keep_best=1, best_mode=mode, async_save=False)
  ckpt = Checkpointer(tmp_path, config=cfg)
  scores = {1: 0.5, 2: 0.9, 3: None, 4: 0.1, 5: None, 6: 0.3}
  for step, score in scores.items():
    ckpt.save(step, state=_state(step), host={}, score=score)
  ckpt.close()
  # Hand-derived: last two are {5, 6}; best among validated {1: .5, 2: .9, 4: .1, 6: .3} is 2 (max)
  # or 4 (min).
  best = 2 if mode is BestMode.MAX else 4
  assert Checkpointer(tmp_path, config=cfg).all_steps() == sorted({5, 6, best})


def test_best_tracker_round_trips_and_respects_mode():
  t = BestTracker(mode=BestMode.MAX)
  assert t.update(1, 0.2) and not t.update(2, 0.1) and t.update(3, 0.4)
  assert not t.update(4, float("nan"))
  again = BestTracker.from_dict(BestMode.MAX, t.as_dict())
  assert (again.best_score, again.best_step) == (0.4, 3)
  low = BestTracker(mode=BestMode.MIN)
  assert low.update(1, 0.2) and low.update(2, 0.1) and not low.update(3, 0.3)


def test_bad_checkpoint_config_names_the_field():
  with pytest.raises(ConfigError, match="checkpoint.keep_last"):
    CheckpointConfig(keep_last=0)
  with pytest.raises(ConfigError, match="checkpoint.every_steps"):
    CheckpointConfig(every_steps=0)


_CHILD = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp, numpy as np
    from hpt_jax.training.checkpoint import CheckpointConfig, Checkpointer
    ckpt = Checkpointer(sys.argv[1], config=CheckpointConfig(async_save=True, keep_last=3))
    small = {"w": jnp.full((4,), 1.0), "big": jnp.zeros((8,), jnp.float32)}
    ckpt.save(1, state=small, host={"position": 1})
    ckpt.wait()
    # Step 2 is large (incompressible) so that its write takes long enough to be killed mid-way.
    big = np.random.default_rng(0).normal(size=(48 * 1024 * 1024,)).astype(np.float32)
    ckpt.save(2, state={"w": jnp.full((4,), 2.0), "big": jnp.asarray(big)}, host={"position": 2})
    print("SAVING", flush=True)
    ckpt.wait()
    print("DONE", flush=True)
    time.sleep(60)
""")


def test_sigkill_during_save_leaves_previous_checkpoint_restorable(tmp_path):
  directory = tmp_path / "ckpt"
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  child = subprocess.Popen([sys.executable, str(script), str(directory)], stdout=subprocess.PIPE,
                           env=env, text=True)
  try:
    line = child.stdout.readline()
    assert line.strip() == "SAVING", line
    # Kill while step 2 is still a temporary directory, i.e. genuinely mid-write.
    tmp_dirs = [p for p in directory.iterdir() if p.name.startswith("2.")]
    assert tmp_dirs and not (directory / "2").exists(), sorted(p.name for p in directory.iterdir())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    child.kill()
  assert child.returncode == -signal.SIGKILL
  assert not (directory / "2").exists()
  like = {"w": jnp.zeros((4,)), "big": jnp.zeros((8,), jnp.float32)}
  ckpt = Checkpointer(directory, config=CheckpointConfig(async_save=False, keep_last=3))
  assert ckpt.latest_step() == 1
  state, host = ckpt.restore(like=like)
  np.testing.assert_array_equal(state["w"], np.ones(4))
  assert host == {"position": 1}
  # The restart continues: it writes step 2 anew and the debris of the killed write is gone.
  ckpt.save(2, state={"w": jnp.full((4,), 3.0), "big": jnp.ones((8,), jnp.float32)},
            host={"position": 2})
  assert ckpt.all_steps() == [1, 2]
  state, host = ckpt.restore(like=like)
  ckpt.close()
  np.testing.assert_array_equal(state["w"], np.full(4, 3.0))
  assert [p.name for p in directory.iterdir() if "tmp" in p.name] == []
