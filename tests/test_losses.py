"""Loss terms against straightforward NumPy references; padding never contributes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model_test_config import loss_config
from sln_jax import losses

B, A, N, NP, R, K, C, G = 2, 30, 8, 4, 6, 3, 4, 8


def _outputs(seed: int = 0, head: str = "layers") -> dict:
    rng = np.random.default_rng(seed)
    out = {
        "rpn_logits": rng.normal(0, 2, (B, A)),
        "rpn_deltas": rng.normal(0, 1, (B, A, 4)),
        "rpn_labels": rng.integers(-1, 2, (B, A)),
        "rpn_box_targets": rng.normal(0, 1, (B, A, 4)),
        "box_logits": rng.normal(0, 2, (B, N, C + 1)),
        "box_deltas": rng.normal(0, 1, (B, N, 4)),
        "roi_classes": rng.integers(0, C + 1, (B, N)),
        "roi_box_targets": rng.normal(0, 1, (B, N, 4)),
        "roi_valid": rng.random((B, N)) < 0.8,
        "mask_valid": np.array([[True, True, False, True], [True, False, False, False]]),
        "global_logits": rng.normal(0, 2, (B, G, G, K)),
        "global_targets": rng.integers(0, K, (B, G, G)),
        "global_valid": rng.random((B, G, G)) < 0.7,
    }
    out["roi_is_positive"] = (out["roi_classes"] > 0) & out["roi_valid"]
    if head == "layers":
        out["layer_logits"] = rng.normal(0, 3, (B, NP, R, R, K))
        out["layer_targets"] = rng.integers(-1, K, (B, NP, R, R))
    else:
        out["semdist"] = rng.normal(2, 1.5, (B, NP, R, R))
        out["semdist_targets"] = rng.uniform(0, K + 1, (B, NP, R, R))
    return {k: jnp.asarray(v.astype(np.float32) if v.dtype == np.float64 else v)
            for k, v in out.items()}


def _np(x):
    return np.asarray(x, np.float64)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _smooth_l1(x, beta):
    return np.where(np.abs(x) < beta, 0.5 * x ** 2 / beta, np.abs(x) - 0.5 * beta)


def _reference(out: dict, occluded_weight: float = 1.0) -> dict:
    """Per-term loss with explicit loops over every counted element."""
    o = {k: np.asarray(v) for k, v in out.items()}
    terms = {}
    ce, reg, n_s, n_p = 0.0, 0.0, 0, 0
    for b in range(B):
        for a in range(A):
            label, z = o["rpn_labels"][b, a], float(o["rpn_logits"][b, a])
            if label < 0:
                continue
            n_s += 1
            ce -= _log_sigmoid(z) if label == 1 else _log_sigmoid(-z)
            if label == 1:
                n_p += 1
                reg += _smooth_l1(_np(o["rpn_deltas"][b, a]) - o["rpn_box_targets"][b, a],
                                  1 / 9).sum()
    terms["rpn_cls"], terms["rpn_box"] = ce / n_s, reg / max(n_p, 1)
    ce, reg, n_s, n_p = 0.0, 0.0, 0, 0
    for b in range(B):
        for r in range(N):
            if not o["roi_valid"][b, r]:
                continue
            n_s += 1
            z = _np(o["box_logits"][b, r])
            ce -= z[o["roi_classes"][b, r]] - np.log(np.exp(z).sum())
            if o["roi_is_positive"][b, r]:
                n_p += 1
                reg += _smooth_l1(_np(o["box_deltas"][b, r]) - o["roi_box_targets"][b, r],
                                  1.0).sum()
    terms["box_cls"], terms["box_reg"] = ce / n_s, reg / max(n_p, 1)
    rois = [(b, r) for b in range(B) for r in range(NP) if o["mask_valid"][b, r]]
    if "layer_logits" in o:
        ce, amodal, weights = [], [], []
        for b, r in rois:
            z = _np(o["layer_logits"][b, r])
            t = o["layer_targets"][b, r]
            full = np.concatenate([np.zeros(z.shape[:-1] + (1,)), z], axis=-1)
            logp = full - np.log(np.exp(full).sum(-1, keepdims=True))
            ce.append(-np.take_along_axis(logp, (t + 1)[..., None], -1)[..., 0])
            weights.append(np.where(t >= 1, occluded_weight, 1.0))
            p_amodal = 1 - np.exp(logp[..., 0])
            amodal.append(-np.where(t >= 0, np.log(p_amodal), np.log(1 - p_amodal)))
        terms["layers"] = np.sum(np.multiply(ce, weights)) / np.sum(weights)
        terms["amodal"] = np.mean(amodal)
    else:
        terms["semdist"] = np.mean([_smooth_l1(_np(o["semdist"][b, r])
                                               - o["semdist_targets"][b, r], 1.0)
                                    for b, r in rois])
    logp = _np(o["global_logits"]) - np.log(np.exp(_np(o["global_logits"])).sum(-1,
                                                                                keepdims=True))
    picked = np.take_along_axis(logp, o["global_targets"][..., None], -1)[..., 0]
    terms["glm"] = -picked[o["global_valid"]].mean()
    return terms


@pytest.mark.parametrize("head", ["layers", "semdist"])
@pytest.mark.parametrize("seed", [0, 1])
def test_terms_equal_numpy_reference(head, seed):
    out = _outputs(seed, head)
    weights = loss_config(rpn_cls=0.5, rpn_box=2.0, box_cls=1.5, box_reg=0.25, layers=3.0,
                          amodal=0.7, semdist=1.2, glm=0.1, occluded_pixel_weight=4.0)
    total, metrics = jax.jit(lambda o: losses.compute(o, weights))(out)
    expected = _reference(out, occluded_weight=4.0)
    assert set(metrics) == {f"loss/{k}" for k in expected} | {"loss/total"}
    for name, value in expected.items():
        np.testing.assert_allclose(float(metrics[f"loss/{name}"]), value, rtol=2e-5,
                                   err_msg=name)
    np.testing.assert_allclose(float(total), sum(weights[k] * v for k, v in expected.items()),
                               rtol=2e-5)
    assert float(metrics["loss/total"]) == float(total)


def test_padding_and_unsampled_entries_never_contribute():
    out = _outputs(3)
    _, base = losses.compute(out, loss_config())
    changed = dict(out)
    rng = np.random.default_rng(9)

    def scramble(key, where):
        noise = jnp.asarray(rng.normal(0, 50, out[key].shape).astype(np.float32))
        while where.ndim < noise.ndim:
            where = where[..., None]
        changed[key] = jnp.where(where, noise, out[key])

    scramble("rpn_logits", out["rpn_labels"] < 0)
    scramble("rpn_deltas", out["rpn_labels"] != 1)
    scramble("rpn_box_targets", out["rpn_labels"] != 1)
    scramble("box_logits", ~out["roi_valid"])
    scramble("box_deltas", ~out["roi_is_positive"])
    scramble("layer_logits", ~out["mask_valid"])
    scramble("global_logits", ~out["global_valid"])
    _, after = losses.compute(changed, loss_config())
    for key, value in base.items():
        np.testing.assert_allclose(float(after[key]), float(value), rtol=1e-6, err_msg=key)


def test_empty_sampling_gives_zero_not_nan():
    out = _outputs(4)
    out["rpn_labels"] = jnp.where(out["rpn_labels"] == 1, 0, out["rpn_labels"])
    out["roi_is_positive"] = jnp.zeros_like(out["roi_is_positive"])
    out["mask_valid"] = jnp.zeros_like(out["mask_valid"])
    _, metrics = losses.compute(out, loss_config())
    assert float(metrics["loss/rpn_box"]) == 0.0
    assert float(metrics["loss/box_reg"]) == 0.0
    assert float(metrics["loss/layers"]) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_smooth_l1_values():
    x = jnp.array([-2.0, -0.05, 0.0, 0.05, 0.5, 3.0])
    np.testing.assert_allclose(losses.smooth_l1(x, 0.1),
                               [1.95, 0.0125, 0.0, 0.0125, 0.45, 2.95], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, (5, 3), elements=st.floats(-60, 60, width=32)))
def test_amodal_log_probs_are_one_minus_softmax_background(logits):
    log_amodal, log_background = losses.amodal_log_probs(jnp.asarray(logits))
    z = np.concatenate([np.zeros((5, 1)), logits.astype(np.float64)], axis=-1)
    log_bg = -np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) - z.max(-1)
    np.testing.assert_allclose(np.asarray(log_background), log_bg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(log_amodal)) + np.exp(log_bg), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.layer_log_probs(jnp.asarray(logits)))[:, 0],
                               log_bg, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda x: jnp.sum(losses.amodal_log_probs(x)[0]
                                       + losses.amodal_log_probs(x)[1]))(jnp.asarray(logits))
    assert np.isfinite(np.asarray(grads)).all()


def test_amodal_and_layer_losses_agree_on_a_correct_prediction():
    """A confident, correct layer prediction gives small layer and amodal losses alike
    (the amodal term is the background-vs-object split of the same softmax)."""
    targets = np.array([-1, 0, 1, 2])
    logits = np.where(np.arange(K)[None] == targets[:, None], 8.0, -8.0).astype(np.float32)
    log_amodal, log_background = losses.amodal_log_probs(jnp.asarray(logits))
    nll = np.where(targets >= 0, -np.asarray(log_amodal), -np.asarray(log_background))
    assert nll.max() < 2e-3
    logp = np.asarray(losses.layer_log_probs(jnp.asarray(logits)))
    assert np.all(-logp[np.arange(4), targets + 1] < 2e-3)
    # A hidden pixel predicted as visible costs the layer term, not the amodal one.
    wrong = np.array([[8.0, -8.0, -8.0]], np.float32)
    assert -float(losses.layer_log_probs(jnp.asarray(wrong))[0, 2]) > 10
    assert -float(losses.amodal_log_probs(jnp.asarray(wrong))[0][0]) < 1e-3


def test_sigmoid_layers_form_equals_numpy_reference():
    """The reference's losses: per-layer BCE (hidden pixels weighted) and the BCE of the
    sigmoid of the summed layer logits against the amodal mask."""
    out = _outputs(5)
    _, metrics = losses.compute(out, loss_config(occluded_pixel_weight=3.0,
                                                 layers_form="sigmoid"))
    o = {k: np.asarray(v) for k, v in out.items()}
    bce_sum, weights, amodal = 0.0, 0.0, []
    for b in range(B):
        for r in range(NP):
            if not o["mask_valid"][b, r]:
                continue
            for y in range(R):
                for x in range(R):
                    z, t = _np(o["layer_logits"][b, r, y, x]), o["layer_targets"][b, r, y, x]
                    w = 3.0 if t >= 1 else 1.0
                    bce = sum(-_log_sigmoid(z[c]) if t == c else -_log_sigmoid(-z[c])
                              for c in range(K))
                    bce_sum += w * bce
                    weights += w
                    s = z.sum()
                    amodal.append(-_log_sigmoid(s) if t >= 0 else -_log_sigmoid(-s))
    np.testing.assert_allclose(float(metrics["loss/layers"]), bce_sum / weights, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["loss/amodal"]), np.mean(amodal), rtol=2e-5)
    # The other terms do not depend on the form.
    _, softmax = losses.compute(out, loss_config())
    assert float(metrics["loss/glm"]) == float(softmax["loss/glm"])
    assert float(metrics["loss/layers"]) != float(softmax["loss/layers"])


def test_unknown_layers_form_is_a_clear_error():
    with pytest.raises(ValueError, match="layers_form must be 'softmax' or 'sigmoid'"):
        losses.compute(_outputs(0), loss_config(layers_form="focal"))
