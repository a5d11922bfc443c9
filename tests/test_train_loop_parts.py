"""Unit tests of the loop's host-side parts: overrides, rollout metrics, writers, host blocks."""

import dataclasses
import enum
import json
import pathlib

import jax
import numpy as np
import pytest

from hpt_jax.training import distributed
from hpt_jax.training.metrics import LoggingConfig, MetricsWriter, read_jsonl, rollout_metrics, summary_line
from hpt_jax.training.overrides import ConfigError, apply_overrides, load_config_file, parse_value, to_dict


class _Color(enum.Enum):
  RED = "red"
  BLUE = "blue"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inner:
  lr: float = 1e-3
  steps: int = 10
  name: str = "a"
  flag: bool = False
  color: _Color = _Color.RED
  sizes: tuple[int, ...] = (1, 2)
  maybe: int | None = None
  path: pathlib.Path = pathlib.Path("x")

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError(f"inner.steps must be >= 0, got {self.steps}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
  inner: _Inner = _Inner()
  seed: int = 0


def test_overrides_parse_each_type():
  cfg = apply_overrides(_Outer(), [
      "inner.lr=1e-6", "inner.steps=1e3", "inner.name=hello=world", "inner.flag=true",
      "inner.color=BLUE", "inner.sizes=(4, 8,16)", "inner.maybe=none", "inner.path=/tmp/p", "seed=7"])
  assert cfg == _Outer(inner=_Inner(lr=1e-6, steps=1000, name="hello=world", flag=True,
                                    color=_Color.BLUE, sizes=(4, 8, 16), maybe=None,
                                    path=pathlib.Path("/tmp/p")), seed=7)
  assert apply_overrides(cfg, ["inner.maybe=3"]).inner.maybe == 3
  # The original is untouched (frozen dataclasses, replaced not mutated).
  assert _Outer().inner.lr == 1e-3


@pytest.mark.parametrize("override, field", [
    ("inner.lrr=1", "inner.lrr"),
    ("nope=1", "nope"),
    ("inner.steps=abc", "inner.steps"),
    ("inner.steps=1.5", "inner.steps"),
    ("inner.flag=maybe", "inner.flag"),
    ("inner.color=green", "inner.color"),
    ("inner=3", "inner"),
    ("inner.steps=-1", "inner.steps"),
    ("seed", "seed"),
])
def test_bad_overrides_name_the_field(override, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    apply_overrides(_Outer(), [override])


def test_config_file_loading_and_errors(tmp_path):
  good = tmp_path / "good.py"
  good.write_text("def get_config():\n  return {'a': 1}\n")
  assert load_config_file(good) == {"a": 1}
  with pytest.raises(ConfigError, match="does not exist"):
    load_config_file(tmp_path / "missing.py")
  bad = tmp_path / "bad.py"
  bad.write_text("X = 1\n")
  with pytest.raises(ConfigError, match="get_config"):
    load_config_file(bad)


def test_to_dict_is_json_able():
  d = to_dict(_Outer())
  assert json.loads(json.dumps(d))["inner"]["color"] == "red"
  assert d["inner"]["sizes"] == [1, 2] and d["inner"]["path"] == "x"


def test_parse_value_literal_and_tuple_arity():
  from typing import Literal
  assert parse_value("b", Literal["a", "b"], path="x") == "b"
  with pytest.raises(ConfigError, match="x"):
    parse_value("c", Literal["a", "b"], path="x")
  with pytest.raises(ConfigError, match="expected 2"):
    parse_value("1,2,3", tuple[int, int], path="x")


def test_rollout_metrics_against_hand_values():
  # 3 questions x 4 rollouts; q0 2/4 correct, q1 0/4 (sent to SFT), q2 4/4.
  correct = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  lengths = np.array([[3, 5, 7, 9], [2, 2, 2, 2], [4, 4, 4, 8]])
  truncated = np.array([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 1]], bool)
  m = rollout_metrics(rewards=correct.astype(float), correct=correct, response_lengths=lengths,
                      truncated=truncated, to_sft=np.array([False, True, False]),
                      num_rl_rows=8, num_sft_rows=1, timeouts=2)
  assert m["reward/accuracy"] == pytest.approx(6 / 12)
  assert m["reward/solved_fraction"] == pytest.approx(2 / 3)
  assert m["gate/sft_fraction"] == pytest.approx(1 / 3)
  # The paper's off_example_ratio: k SFT questions out of Q give k / (k + n (Q - k)) = 1 / 9.
  assert m["gate/off_example_ratio"] == pytest.approx(1 / (1 + 4 * 2))
  assert m["response/length_mean"] == pytest.approx(52 / 12)
  assert m["response/length_max"] == 9
  assert m["response/truncation_rate"] == pytest.approx(2 / 12)
  assert m["reward/timeouts"] == 2
  with pytest.raises(ValueError, match="to_sft"):
    rollout_metrics(rewards=correct, correct=correct, response_lengths=lengths, truncated=truncated,
                    to_sft=np.zeros(4, bool), num_rl_rows=1, num_sft_rows=0, timeouts=0)


def test_metrics_writer_jsonl_tensorboard_and_truncate(tmp_path):
  w = MetricsWriter(tmp_path, config=LoggingConfig(), is_writer=True)
  for step in (1, 2, 3):
    w.write(step, {"reward/accuracy": step / 10, "train/loss": np.float32(2.0)})
  w.close()
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[1]["reward/accuracy"] == pytest.approx(0.2)
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  w = MetricsWriter(tmp_path, config=LoggingConfig(tensorboard=False), is_writer=True)
  w.truncate_after(2)
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
  # A non-writing process writes nothing at all.
  other = tmp_path / "other"
  MetricsWriter(other, config=LoggingConfig(), is_writer=False).write(1, {"a": 1.0})
  assert not other.exists()


def test_summary_line_formats_known_keys():
  line = summary_line(12, {"reward/accuracy": 0.375, "train/grad_norm": 1.25e-5, "x/other": 3})
  assert line == "step 12 | accuracy 0.375 | grad_norm 1.250e-05"


@pytest.mark.parametrize("n, count", [(8, 2), (7, 2), (5, 3), (2, 4)])
def test_host_blocks_partition_the_range(n, count):
  blocks = [distributed.host_block(n, process_index=p, process_count=count) for p in range(count)]
  covered = [i for b in blocks for i in range(n)[b]]
  assert covered == list(range(n))
  sizes = [len(range(n)[b]) for b in blocks]
  assert max(sizes) - min(sizes) <= 1


def test_global_array_single_process_matches_value():
  mesh = jax.make_mesh((4, 2), ("data", "tensor"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  value = np.arange(24, dtype=np.float32).reshape(8, 3)
  arr = distributed.global_array(value, sharding)
  assert arr.sharding == sharding
  np.testing.assert_array_equal(np.asarray(arr), value)
  np.testing.assert_array_equal(distributed.allgather(arr), value)


def test_distributed_config_requires_complete_coordinator_flags():
  with pytest.raises(ValueError, match="num_processes"):
    distributed.DistributedConfig(coordinator_address="localhost:1234")
  with pytest.raises(ValueError, match="process_id"):
    distributed.DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=2)
