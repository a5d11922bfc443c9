"""The UPGE identity for every named algorithm, plus the equivalences the paper relies on.

A tiny random softmax policy π_θ(a | x) = softmax(x W)_a (θ = W [D, V]) produces the log-probs. For
each algorithm the gradient of its loss wrt W (JAX autodiff through the library) must equal the
explicit estimator −Σ_bt norm_bt · 1_stable · Â / π_ref · ∇_W π_bt assembled in NumPy from the
paper's Table 1 and ESTIMATORS.md — written here independently of the library's code path.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpt_jax import upge

B, T, D, V = 8, 6, 3, 5
LENGTHS = np.array([6, 4, 1, 0, 6, 3, 5, 2])          # a length-1 row and an all-masked row
ADV = np.array([1.0, -0.5, 0.0, 0.7, 0.8, -1.2, -0.9, 0.4])  # both signs and zero
DEMO = np.array([False, True, False, False, True, False, False, False])
SCORES = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@dataclasses.dataclass
class Policy:
  x: np.ndarray         # [B, T, D]
  w: np.ndarray         # [D, V]
  actions: np.ndarray   # [B, T]
  old_logp: np.ndarray  # [B, T]
  entropy: np.ndarray   # [B, T] (constant input; only SRFT reads it, through stop_gradient)
  mask: np.ndarray      # [B, T] bool

  def logp_np(self):
    probs = _softmax(self.x @ self.w)
    return np.log(np.take_along_axis(probs, self.actions[..., None], -1)[..., 0])

  def grad_pi(self):
    """∇_W π(a_bt) = π · x_bt ⊗ (onehot(a_bt) − p_bt). Returns [B, T, D, V]."""
    probs = _softmax(self.x @ self.w)
    pi = np.take_along_axis(probs, self.actions[..., None], -1)[..., 0]
    onehot = np.eye(V)[self.actions]
    return pi[..., None, None] * self.x[..., :, None] * (onehot - probs)[..., None, :]

  def logp_jax(self, w):
    logits = jnp.einsum("btd,dv->btv", jnp.asarray(self.x), w)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(self.actions)[..., None], -1)[..., 0]


def _make_policy():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(B, T, D))
  w = rng.normal(size=(D, V))
  actions = rng.integers(0, V, size=(B, T))
  mask = np.arange(T)[None, :] < LENGTHS[:, None]
  pol = Policy(x, w, actions, np.zeros((B, T)), rng.uniform(0.2, 2.0, (B, T)), mask)
  # Old policy: a perturbed W gives ratios on both sides of 1 ± 0.2 ...
  old = Policy(x, w + 0.35 * rng.normal(size=(D, V)), actions, None, None, mask).logp_np()
  cur = pol.logp_np()
  old[5, 0] = cur[5, 0] - 1.5   # A < 0, r ≈ 4.5 > c = 3: dual clip
  old[0, 1] = cur[0, 1] - 25.0  # log-ratio beyond the ±20 clamp
  pol.old_logp = old
  return pol


def _inputs(pol, w):
  return upge.LossInputs(
      logp=pol.logp_jax(w), response_mask=jnp.asarray(pol.mask), advantages=jnp.asarray(ADV),
      old_logp=jnp.asarray(pol.old_logp), is_demo=jnp.asarray(DEMO), entropy=jnp.asarray(pol.entropy),
      scores=jnp.asarray(SCORES))


# ----- the explicit UPGE parts, per algorithm: returns coefficient c [B, T] with ∇loss = Σ c ∇π -----

def _n_tokens(mask):
  return max(mask.sum(), 1)


def _rows(mask):
  return max((mask.sum(-1) > 0).sum(), 1)


def _ppo_stable(r, a, eps_low, eps_high, dual):
  stable = ~(((a > 0) & (r > 1 + eps_high)) | ((a < 0) & (r < 1 - eps_low)))
  if dual is not None:
    stable &= ~((a < 0) & (r > dual))
  return stable.astype(float)


def _ctx(pol):
  pi = np.exp(pol.logp_np())
  pi_old = np.exp(pol.old_logp)
  a = np.broadcast_to(ADV[:, None], (B, T))
  m = pol.mask.astype(float)
  return pi, pi_old, a, m


def _upge(stable, pi_ref, adv, norm):
  """c = −norm · 1_stable · Â / π_ref (the loss is −J)."""
  return -norm * stable * adv / pi_ref


def _clipped_ratio_coef(pol, *, eps_low, eps_high, dual, norm):
  pi, pi_old, a, m = _ctx(pol)
  delta = np.log(pi) - np.log(pi_old)
  r = np.exp(delta)
  stable = _ppo_stable(r, a, eps_low, eps_high, dual) * (np.abs(delta) < 20)  # clamp: no gradient
  return m * _upge(stable, pi_old, a, norm)


def ref_sft(pol):
  pi, _, _, m = _ctx(pol)
  return m * _upge(1.0, pi, 1.0, 1.0 / _n_tokens(m))


def ref_reinforce(pol):
  pi, _, a, m = _ctx(pol)
  return m * _upge(1.0, pi, a, 1.0 / _n_tokens(m))


def ref_ppo(pol):
  m = pol.mask
  return _clipped_ratio_coef(pol, eps_low=0.2, eps_high=0.2, dual=3.0, norm=1.0 / _n_tokens(m))


def ref_grpo(pol):
  m = pol.mask
  norm = 1.0 / (_rows(m) * (m.sum(-1, keepdims=True) + 1e-8))  # verl: |y_i| + 1e-8
  return _clipped_ratio_coef(pol, eps_low=0.2, eps_high=0.2, dual=3.0, norm=norm)


def ref_dr_grpo(pol):
  return _clipped_ratio_coef(pol, eps_low=0.2, eps_high=0.2, dual=3.0, norm=1.0 / (_rows(pol.mask) * T))


def ref_dapo(pol):
  return _clipped_ratio_coef(pol, eps_low=0.2, eps_high=0.28, dual=10.0, norm=1.0 / _n_tokens(pol.mask))


def ref_cispo(pol):
  pi, pi_old, a, m = _ctx(pol)
  r = pi / pi_old
  stable = np.clip(r, 0.8, 1.2) / r  # the CIS weight replaces the hard mask
  return m * _upge(stable, pi_old, a, 1.0 / _n_tokens(m))


GSPO_EPS = 0.1  # wider than the default 3e-4 so that sequences fall on both sides of the clip


def ref_gspo(pol):
  pi, pi_old, a, m = _ctx(pol)
  lengths = np.maximum(m.sum(-1), 1)
  s = np.exp((m * (np.log(pi) - np.log(pi_old))).sum(-1) / lengths)[:, None]  # [B, 1]
  pi_ref = pi / s  # π_θ · (π_old(τ)/π_θ(τ))^{1/|τ|}
  stable = _ppo_stable(np.broadcast_to(s, (B, T)), a, GSPO_EPS, GSPO_EPS, None)
  return m * _upge(stable, pi_ref, a, 1.0 / (_rows(m) * (m.sum(-1, keepdims=True) + 1e-8)))


def ref_luffy(pol):
  pi, pi_old, a, m = _ctx(pol)
  demo = DEMO[:, None]
  gamma = 0.1
  on = _upge(1.0, pi_old, a, 1.0 / T)
  off = _upge(1.0, 1.0, a * gamma / (pi + gamma) ** 2, 1.0 / T)  # π_ref ≡ 1, Â·f′(π)
  return m * np.where(demo, off, on)


def ref_srft(pol):
  pi, _, a, m = _ctx(pol)
  demo = DEMO[:, None]
  h = (pol.entropy * m).sum(-1) / np.maximum(m.sum(-1), 1)
  adv_on = np.where(SCORES == 1.0, 0.1 * np.exp(h), -1.0)[:, None]
  on = _upge(1.0, pi, adv_on, 1.0 / T)
  off = _upge(1.0, 1.0, a * 0.1 / (pi + 0.1) ** 2, 1.0 / T)
  sft = _upge(1.0, pi, 0.5 * np.exp(-h)[:, None], 1.0 / _n_tokens(m * demo))
  return m * np.where(demo, off + sft, on)


def ref_hpt_rl(pol):
  _, pi_old, a, m = _ctx(pol)
  return m * ~DEMO[:, None] * _upge(1.0, pi_old, a, 1.0 / T)


def ref_hpt_sft(pol):
  pi, _, _, m = _ctx(pol)
  demo = DEMO[:, None]
  return m * demo * _upge(1.0, pi, 1.0, 1.0 / _n_tokens(m * demo))


def ref_hpt(pol):
  return ref_hpt_rl(pol) + ref_hpt_sft(pol)


CASES = {
    upge.AlgorithmName.SFT: ({}, ref_sft),
    upge.AlgorithmName.REINFORCE: ({}, ref_reinforce),
    upge.AlgorithmName.PPO: ({}, ref_ppo),
    upge.AlgorithmName.GRPO: ({}, ref_grpo),
    upge.AlgorithmName.DR_GRPO: ({}, ref_dr_grpo),
    upge.AlgorithmName.DAPO: ({}, ref_dapo),
    upge.AlgorithmName.CISPO: ({}, ref_cispo),
    upge.AlgorithmName.GSPO: ({"epsilon_low": GSPO_EPS, "epsilon_high": GSPO_EPS}, ref_gspo),
    upge.AlgorithmName.LUFFY: ({"entropy_coeff": 0.0}, ref_luffy),
    upge.AlgorithmName.SRFT: ({"entropy_coeff": 0.0}, ref_srft),
    upge.AlgorithmName.HPT_RL: ({}, ref_hpt_rl),
    upge.AlgorithmName.HPT_SFT: ({}, ref_hpt_sft),
    upge.AlgorithmName.HPT: ({"entropy_coeff": 0.0}, ref_hpt),
}


def test_every_algorithm_has_an_identity_case():
  assert set(CASES) == set(upge.AlgorithmName) == set(upge.ALGORITHMS)


@pytest.mark.parametrize("name", list(CASES), ids=lambda n: n.value)
def test_upge_identity(name, x64):
  """∇_W loss == −Σ norm · 1_stable · Â / π_ref · ∇_W π, for every named algorithm."""
  hparams, reference = CASES[name]
  algo = upge.make_algorithm(name.value, **hparams)
  pol = _make_policy()

  def loss(w):
    terms, _ = algo.loss_terms(_inputs(pol, w))
    return upge.total_loss(terms)

  grad = jax.jit(jax.grad(loss))(jnp.asarray(pol.w))
  coef = reference(pol)
  expected = np.einsum("bt,btdv->dv", coef, pol.grad_pi())
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, expected, rtol=1e-9, atol=1e-12)
  assert np.abs(expected).max() > 1e-3  # the case is not trivially zero


def test_identity_cases_exercise_both_sides_of_the_masks(x64):
  """The fixture really has clipped, dual-clipped and clamped tokens (else the identity tests are weak)."""
  pol = _make_policy()
  pi, pi_old, a, m = _ctx(pol)
  r = pi / pi_old
  stable = _ppo_stable(r, a, 0.2, 0.2, 3.0)[pol.mask]
  assert 0 < stable.sum() < stable.size
  assert ((a < 0) & (r > 3.0) & pol.mask).any()
  assert (np.abs(np.log(r)) > 20)[pol.mask].any()
  s_stable = ref_gspo(pol) != 0
  assert s_stable[pol.mask].any() and not s_stable[pol.mask & (a != 0)].all()


def test_sft_gradient_equals_token_mean_nll(x64):
  pol = _make_policy()
  m = jnp.asarray(pol.mask)

  def sft(w):
    terms, _ = upge.Sft().loss_terms(upge.LossInputs(logp=pol.logp_jax(w), response_mask=m))
    return upge.total_loss(terms)

  def nll(w):
    return -jnp.sum(jnp.where(m, pol.logp_jax(w), 0.0)) / jnp.sum(m)

  (sft_value, sft_grad), (nll_value, nll_grad) = jax.jit(
      lambda w: (jax.value_and_grad(sft)(w), jax.value_and_grad(nll)(w)))(jnp.asarray(pol.w))
  np.testing.assert_allclose(sft_grad, nll_grad, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(sft_value, nll_value, rtol=1e-12)


def test_grpo_with_old_equal_current_is_reinforce_with_group_baseline(x64):
  """One update with ℓ_old = sg(ℓ): r ≡ 1, no clip, GRPO == REINFORCE on group-centred advantages."""
  pol = _make_policy()
  scores = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
  group_ids = jnp.asarray([0, 0, 0, 0, 1, 1, 1, 1])
  adv = upge.grpo_advantages(scores, group_ids, num_groups=2)
  m = jnp.asarray(pol.mask)

  def grpo(w):
    logp = pol.logp_jax(w)
    inputs = upge.LossInputs(logp=logp, response_mask=m, advantages=adv, old_logp=jax.lax.stop_gradient(logp))
    return upge.total_loss(upge.Grpo(aggregation=upge.Aggregation.TOKEN_MEAN).loss_terms(inputs)[0])

  def reinforce_baseline(w):
    # REINFORCE with the group-mean baseline, scaled by the group std: −Σ (s − μ_g)/(σ_g + ε) ℓ / N.
    s = np.asarray(scores).reshape(2, 4)
    a = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    return -jnp.sum(jnp.where(m, jnp.asarray(a)[:, None] * pol.logp_jax(w), 0.0)) / jnp.sum(m)

  grads = jax.jit(lambda w: (jax.grad(grpo)(w), jax.grad(reinforce_baseline)(w)))(jnp.asarray(pol.w))
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_luffy_shaped_term_gradient(x64):
  """d/dθ[−A·π/(π+γ)] = −A·γ/(π+γ)²·π·∇log π, per token (gradient wrt ℓ checked directly)."""
  rng = np.random.default_rng(3)
  logp = np.log(rng.uniform(0.01, 0.99, (3, 4)))
  adv = rng.normal(size=(3, 4))
  gamma = 0.1

  def term(lp):
    loss, _ = upge.no_clip(upge.luffy_shaped_weight(lp, gamma=gamma), jnp.asarray(adv))
    return loss.sum()

  pi = np.exp(logp)
  np.testing.assert_allclose(jax.grad(term)(jnp.asarray(logp)), -adv * gamma / (pi + gamma) ** 2 * pi,
                             rtol=1e-12)


@pytest.mark.parametrize("name", [upge.AlgorithmName.GRPO, upge.AlgorithmName.HPT, upge.AlgorithmName.SRFT,
                                  upge.AlgorithmName.DR_GRPO], ids=lambda n: n.value)
def test_micro_batch_accumulation_equals_full_batch(name, x64):
  """Summing (total, denom) over 4 micro-batches of 2 rows gives the full-batch loss and gradient."""
  pol = _make_policy()
  algo = upge.make_algorithm(name)

  def loss_full(w):
    return upge.total_loss(algo.loss_terms(_inputs(pol, w))[0])

  def loss_micro(w):
    inputs = _inputs(pol, w)
    acc = None
    for k in range(4):
      part = jax.tree.map(lambda v: v[2 * k: 2 * k + 2], inputs)
      terms, _ = algo.loss_terms(part)
      acc = terms if acc is None else upge.add_terms(acc, terms)
    return upge.total_loss(acc)

  w = jnp.asarray(pol.w)
  both = jax.jit(lambda w: (jax.value_and_grad(loss_micro)(w), jax.value_and_grad(loss_full)(w)))
  (micro_value, micro_grad), (full_value, full_grad) = both(w)
  np.testing.assert_allclose(micro_value, full_value, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(micro_grad, full_grad, rtol=1e-12, atol=1e-15)


def test_loss_terms_vmap_equals_loop(x64):
  """vmap over a stack of two micro-batches gives each micro-batch's own terms."""
  pol = _make_policy()
  inputs = _inputs(pol, jnp.asarray(pol.w))
  stacked = jax.tree.map(lambda v: v.reshape(2, 4, *v.shape[1:]), inputs)
  algo = upge.Dapo(entropy_coeff=0.01)
  terms, _ = jax.jit(jax.vmap(algo.loss_terms))(stacked)
  one = jax.jit(algo.loss_terms)
  for k in range(2):
    ref, _ = one(jax.tree.map(lambda v: v[k], stacked))
    for name in ref:
      np.testing.assert_allclose(terms[name].total[k], ref[name].total, rtol=1e-12)
      np.testing.assert_allclose(terms[name].denom[k], ref[name].denom, rtol=1e-12)


def test_all_masked_batch_gives_zero_loss_and_zero_grad():
  """No valid token: loss 0, gradient exactly 0 and finite even with -inf/NaN in the padding (every algorithm)."""
  logp = jnp.full((2, 3), -jnp.inf).at[0, 0].set(jnp.nan)
  inputs = upge.LossInputs(
      logp=logp, response_mask=jnp.zeros((2, 3), bool), advantages=jnp.array([1.0, -1.0]),
      old_logp=jnp.full((2, 3), jnp.nan), is_demo=jnp.array([True, False]), entropy=jnp.full((2, 3), jnp.nan),
      scores=jnp.array([1.0, 0.0]))

  def losses(lp):
    # One jit for all algorithms; entropy follows logp so the entropy bonus is differentiated too.
    return {name.value: upge.total_loss(upge.make_algorithm(name).loss_terms(inputs._replace(logp=lp, entropy=lp))[0])
            for name in upge.AlgorithmName}

  values, grads = jax.jit(lambda lp: (losses(lp), jax.jacrev(losses)(lp)))(logp)
  for name in upge.AlgorithmName:
    assert values[name.value] == 0.0, name
    np.testing.assert_array_equal(grads[name.value], np.zeros((2, 3)), err_msg=name.value)


def test_unknown_names_list_the_known_ones():
  with pytest.raises(ValueError, match=r"algorithm: unknown name 'grpoo'.*dr_grpo"):
    upge.make_algorithm("grpoo")
  with pytest.raises(ValueError, match=r"aggregation: unknown mode 'seq-mean'.*token-mean"):
    upge.make_algorithm("ppo", aggregation="seq-mean")
  with pytest.raises(TypeError, match="gamma"):
    upge.make_algorithm("ppo", gamma=0.1)


def test_bad_inputs_name_the_argument():
  good = upge.LossInputs(logp=jnp.zeros((2, 3)), response_mask=jnp.ones((2, 3), bool),
                         advantages=jnp.zeros(2), old_logp=jnp.zeros((2, 3)), is_demo=jnp.array([True, False]))
  ppo = upge.Ppo()
  with pytest.raises(ValueError, match=r"inputs\.logp: expected rank 2"):
    ppo.loss_terms(good._replace(logp=jnp.zeros((2, 3, 1))))
  with pytest.raises(ValueError, match=r"inputs\.old_logp: expected shape \(2, 3\)"):
    ppo.loss_terms(good._replace(old_logp=jnp.zeros((2, 4))))
  with pytest.raises(ValueError, match=r"inputs\.advantages: expected shape \(2,\)"):
    ppo.loss_terms(good._replace(advantages=jnp.zeros(3)))
  with pytest.raises(ValueError, match=r"inputs\.response_mask: must be boolean or in \{0, 1\}"):
    ppo.loss_terms(good._replace(response_mask=jnp.full((2, 3), 0.5)))
  with pytest.raises(ValueError, match=r"inputs\.old_logp: required by Ppo"):
    ppo.loss_terms(good._replace(old_logp=None))
  with pytest.raises(ValueError, match=r"inputs\.is_demo: expected shape \(2,\)"):
    upge.Hpt(entropy_coeff=0.0).loss_terms(good._replace(is_demo=jnp.ones((2, 3), bool)))
  with pytest.raises(ValueError, match=r"inputs\.entropy: required by Hpt"):
    upge.Hpt().loss_terms(good)
  # A {0, 1} float mask is fine and equals the boolean one.
  a = upge.total_loss(ppo.loss_terms(good._replace(response_mask=jnp.ones((2, 3))))[0])
  b = upge.total_loss(ppo.loss_terms(good)[0])
  assert a == b


def test_readme_example_values():
  """The README example, checked against hand-derived numbers.

  Dr.GRPO advantages of group 0 (scores 1, 0, 1): A = (1/3, −2/3, 1/3); r = e^{0.1} on every token.
  RL term: −(1/3·3 − 2/3·2 + 1/3·1)·r / T = 0; its gradient −A·r/T per on-policy token. SFT term: the
  demo's token-mean NLL −(log 0.5 + 0.1), gradient −1/2 per demo token.
  """
  scores, group_ids = jnp.array([1., 0., 1., 1.]), jnp.array([0, 0, 0, 1])
  adv = upge.grpo_advantages(scores, group_ids, num_groups=2, normalize_by_std=False)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]], bool)
  old_logp = jnp.log(jnp.full((4, 3), 0.5))

  def loss(logp):
    inputs = upge.LossInputs(logp=logp, response_mask=mask, advantages=adv, old_logp=old_logp,
                             is_demo=jnp.array([False, False, False, True]))
    terms, _ = upge.make_algorithm("hpt", entropy_coeff=0.0).loss_terms(inputs)
    return upge.total_loss(terms)

  value, grad = jax.jit(jax.value_and_grad(loss))(old_logp + 0.1)
  r = np.exp(0.1)
  a = np.array([1 / 3, -2 / 3, 1 / 3])
  expected_grad = np.zeros((4, 3))
  expected_grad[:3] = -a[:, None] * r / 3 * np.asarray(mask[:3])
  expected_grad[3, :2] = -0.5
  np.testing.assert_allclose(value, -(np.log(0.5) + 0.1), rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7)
