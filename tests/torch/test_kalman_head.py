"""KalmanHead: the deployed model's final layer tracked from delayed labels (issue 5, item 4)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.adapters.torch import KalmanHead
from streamweights.adapters.torch.examples import small_cnn
from tests.torch import digits

INPUT_SHAPE = (1, 8, 8)
SGD_RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
RECOVERY_WINDOW = 300  # labels after the change over which recovery is scored


def half_corrupted_stream(test_x, test_y, kind, seed):
    """Two passes over the held-out digits in random order; the second is corrupted."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(test_x)) for _ in range(2)])
    images, labels = test_x[order].copy(), test_y[order]
    half = len(test_x)
    images[half:] = digits.corrupt(images[half:], kind, 4, seed)
    return images, labels, half


def prequential_hits_kalman(head, features, labels):
    hits = []
    for row, label in zip(features, labels, strict=True):
        hits.append(int(np.argmax(head.predict_features(row[None, :])[0])) == label)
        head.learn_features(row[None, :], [label])
    return np.array(hits)


def prequential_hits_sgd(model, features, labels, rate):
    """Fine-tune a copy of the deployed head by SGD on each label (cross-entropy)."""
    head = torch.nn.Linear(model[-1].in_features, model[-1].out_features)
    head.load_state_dict(model[-1].state_dict())
    optimiser = torch.optim.SGD(head.parameters(), lr=rate)
    inputs = torch.from_numpy(features[:, :-1]).float()
    hits = []
    for index, label in enumerate(labels.tolist()):
        logits = head(inputs[index:index + 1])
        hits.append(int(logits.argmax()) == label)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(logits, torch.tensor([label])).backward()
        optimiser.step()
    return np.array(hits)


def test_recovers_faster_than_sgd_at_its_best_rate_when_the_corruption_changes(
        digit_model, digit_split):
    """Scenario: labels arrive for every image; halfway the images become corrupted (each
    of the five corruptions at severity 4 in turn), so the frozen backbone's features
    move and the head must re-learn. KalmanHead runs with its defaults (forgetting
    learned, nothing tuned); SGD fine-tunes the deployed head on each label at each rate
    of a grid, and keeps the rate that is best averaged over the corruptions.
    We expect: KalmanHead's accuracy over the 300 labels after the change, averaged over
    corruptions, is above SGD's at its best rate, and above it on most corruptions."""
    _, _, test_x, test_y = digit_split
    kalman, sgd = {}, {rate: {} for rate in SGD_RATES}
    for index, kind in enumerate(digits.CORRUPTIONS):
        images, labels, half = half_corrupted_stream(test_x, test_y, kind, seed=70 + index)
        window = slice(half, half + RECOVERY_WINDOW)
        head = KalmanHead(digit_model, 10, INPUT_SHAPE)
        features = head.features(images)
        kalman[kind] = float(prequential_hits_kalman(head, features, labels)[window].mean())
        for rate in SGD_RATES:
            hits = prequential_hits_sgd(digit_model, features, labels, rate)
            sgd[rate][kind] = float(hits[window].mean())
    best_rate = max(SGD_RATES, key=lambda rate: np.mean(list(sgd[rate].values())))
    kalman_mean = float(np.mean(list(kalman.values())))
    sgd_mean = float(np.mean(list(sgd[best_rate].values())))
    print(f"accuracy over {RECOVERY_WINDOW} labels after the change: kalman "
          f"{ {k: round(v, 3) for k, v in kalman.items()} } mean {kalman_mean:.3f}; sgd at "
          f"best rate {best_rate}: { {k: round(v, 3) for k, v in sgd[best_rate].items()} } "
          f"mean {sgd_mean:.3f}")
    assert kalman_mean > sgd_mean
    wins = sum(kalman[k] > sgd[best_rate][k] for k in kalman)
    assert wins >= 3, (kalman, sgd[best_rate])


def test_starts_as_the_deployed_head_and_exports_a_loadable_layer(digit_model, digit_split):
    """Scenario: a fresh head serves a few images, learns 200 labels, and exports.
    We expect: before any label it serves exactly the deployed model's softmax (up to
    float32 vs float64); the export loads into the deployed architecture with
    strict=False touching only the final layer, and the loaded model agrees with the
    head's served classes."""
    _, _, test_x, test_y = digit_split
    head = KalmanHead(digit_model, 10, INPUT_SHAPE)
    with torch.no_grad():
        deployed = torch.softmax(digit_model(torch.from_numpy(test_x[:20])), dim=1).numpy()
    np.testing.assert_allclose(head.predict_many(test_x[:20]), deployed, atol=1e-5)
    head.learn_many(test_x[:200], test_y[:200])
    exported = head.export_tensors()
    assert set(exported) == {"12.weight", "12.bias"}
    fresh = small_cnn(n_classes=10)
    fresh.load_state_dict(digit_model.state_dict())
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                   strict=False)
    assert result.unexpected_keys == []
    assert torch.equal(fresh[12].weight, torch.from_numpy(exported["12.weight"]))
    fresh.eval()
    with torch.no_grad():
        loaded = fresh(torch.from_numpy(test_x[200:400])).argmax(dim=1).numpy()
    served = head.predict_many(test_x[200:400]).argmax(axis=1)
    assert np.mean(loaded == served) >= 0.99


def test_weights_average_and_state_round_trip(digit_model, digit_split):
    """Scenario: with the EMA of weights (λ = 0.99), learn 150 labels, snapshot through the
    JSON codec, restore, and continue both on 100 more.
    We expect: identical served probabilities and states; the average differs from the
    live posterior (it is a temporal ensemble, not a copy)."""
    _, _, test_x, test_y = digit_split
    head = KalmanHead(digit_model, 10, INPUT_SHAPE, weights_average=0.99)
    head.learn_many(test_x[:150], test_y[:150])
    restored = KalmanHead(digit_model, 10, INPUT_SHAPE, weights_average=0.99)
    restored.load_state_dict(loads_state(dumps_state(head.state_dict())))
    for adapter in (head, restored):
        adapter.learn_many(test_x[150:250], test_y[150:250])
    np.testing.assert_array_equal(head.predict_many(test_x[250:300]),
                                  restored.predict_many(test_x[250:300]))
    assert dumps_state(head.state_dict()) == dumps_state(restored.state_dict())
    live = KalmanHead(digit_model, 10, INPUT_SHAPE)
    live.learn_many(test_x[:250], test_y[:250])
    assert not np.array_equal(live.predict_many(test_x[250:300]),
                              head.predict_many(test_x[250:300]))


def test_bad_arguments_get_clear_errors(digit_model):
    with pytest.raises(ValueError, match=re.escape("no nn.Linear named 'fc'")):
        KalmanHead(digit_model, 10, INPUT_SHAPE, head="fc")
    with pytest.raises(ValueError, match="n_classes: the head '12' has 10 outputs, not 3"):
        KalmanHead(digit_model, 3, INPUT_SHAPE)
    with pytest.raises(ValueError, match=re.escape("kalman_options.task: set by the head")):
        KalmanHead(digit_model, 10, INPUT_SHAPE, kalman_options={"task": "regression"})
    head = KalmanHead(digit_model, 10, INPUT_SHAPE)
    with pytest.raises(ValueError, match="ys"):
        head.learn_many(np.zeros((2, 1, 8, 8)), [0, 11])
    with pytest.raises(ValueError, match=r"features: expected shape \(n, 33\)"):
        head.learn_features(np.zeros((2, 5)), [0, 1])
