"""The blend bench_ensemble.py scores: each model's scores standardised per user, then averaged."""
import torch

from benchmarks.bench_ensemble import StandardisedBlend


class FixedScores:
    n_items = 5

    def __init__(self, scores):
        self.scores = torch.tensor(scores)

    def score_all(self, history):
        return self.scores.expand(len(history), -1).clone()


def test_a_blend_is_scale_free_keeps_ruled_out_items_out_and_weighs_models_equally():
    inf = float("-inf")
    small = FixedScores([inf, 1.0, 2.0, 3.0, 4.0])
    large = FixedScores([inf, 400.0, 300.0, 200.0, 100.0])  # the opposite order, on a 100x scale
    history = torch.zeros(2, 3, dtype=torch.long)
    blended = StandardisedBlend(small, large).score_all(history)
    assert blended.shape == (2, 5) and torch.isinf(blended[:, 0]).all()
    assert torch.allclose(blended[:, 1:], torch.zeros(2, 4), atol=1e-6)  # opposite opinions cancel whatever the scale
    alone = StandardisedBlend(small, small).score_all(history)
    assert torch.equal(alone[0, 1:].argsort(), small.scores[1:].argsort())  # a model blended with itself ranks as it does


def test_a_model_that_scores_every_item_alike_adds_nothing_to_the_blend_instead_of_nan():
    flat = FixedScores([float("-inf"), 2.0, 2.0, 2.0, 2.0])
    ranked = FixedScores([float("-inf"), 1.0, 2.0, 3.0, 4.0])
    blended = StandardisedBlend(flat, ranked).score_all(torch.zeros(1, 3, dtype=torch.long))
    assert torch.isfinite(blended[0, 1:]).all()
    assert torch.equal(blended[0, 1:].argsort(), ranked.scores[1:].argsort())
