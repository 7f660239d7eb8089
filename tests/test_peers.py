"""EASE and item-kNN peers against hand-computed examples."""
import numpy as np
import pytest

from recfunnel.models.peers import EASE, ItemKNN


def _interactions(x):
    users, items = np.nonzero(np.asarray(x))
    return users, items, len(x), len(x[0])


# EASE, lambda = 1, X (3 users x 3 items):   X'X + I = [[3, 2, 1],   P = (X'X + I)^-1 =
#   [[1, 1, 0],                                         [2, 4, 2],     [[ .5, -.25,  0  ],
#    [0, 1, 1],                                         [1, 2, 3]]      [-.25,  .5, -.25],
#    [1, 1, 1]]                                 (det 16)                [ 0,  -.25,  .5 ]]
# B_ij = -P_ij / P_jj, diag 0: [[0, .5, 0], [.5, 0, .5], [0, .5, 0]].
# User 2 (all three items): scores = [1, 1, 1] B = [.5, 1, .5].
EASE_X = [[1, 1, 0], [0, 1, 1], [1, 1, 1]]
EASE_B = np.array([[0, .5, 0], [.5, 0, .5], [0, .5, 0]])


def test_ease_weights_match_the_hand_computed_closed_form():
    model = EASE(regularization=1.0).fit(*_interactions(EASE_X))
    np.testing.assert_allclose(model.weights_, EASE_B, atol=1e-6)
    np.testing.assert_allclose(model.scores(np.array([2])), [[.5, 1, .5]], atol=1e-6)


def test_ease_matches_steck_form_with_a_direct_inverse():
    # Steck's B = I - P diagMat(1 / diag(P)), P = (X'X + lambda I)^-1, on a random X.
    x = (np.random.default_rng(0).random((30, 12)) < 0.3).astype(float)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(12))
    expected = np.eye(12) - p / np.diag(p)
    model = EASE(regularization=5.0).fit(*_interactions(x))
    np.testing.assert_allclose(model.weights_, expected, atol=1e-5)
    np.testing.assert_allclose(model.scores(np.arange(30)), x @ expected, atol=1e-4)


def test_fit_returns_self_and_repeated_pairs_count_once():
    model = EASE(regularization=1.0)
    users, items, n_users, n_items = _interactions(EASE_X)
    assert model.fit(np.r_[users, users], np.r_[items, items], n_users, n_items) is model
    np.testing.assert_allclose(model.weights_, EASE_B, atol=1e-6)


def test_search_returns_best_first_with_ties_to_the_lower_index():
    items, scores = EASE(regularization=1.0).fit(*_interactions(EASE_X)).search(
        np.array([2]), 2)
    np.testing.assert_array_equal(items, [[1, 0]])
    np.testing.assert_allclose(scores, [[1, .5]], atol=1e-6)


def test_search_honours_exclusions_and_pads_with_minus_one():
    # User 0 saw items 0 and 1: only item 2 (score .5) is left of three.
    items, scores = EASE(regularization=1.0).fit(*_interactions(EASE_X)).search(
        np.array([0]), 3, exclude=[np.array([0, 1])])
    np.testing.assert_array_equal(items, [[2, -1, -1]])
    assert scores[0, 0] == pytest.approx(.5) and np.isneginf(scores[0, 1:]).all()


def test_search_never_returns_items_without_training_interactions():
    # Item 3 has no interaction; k beyond the catalogue pads too.
    x = [[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]]
    items, _ = EASE(regularization=1.0).fit(*_interactions(x)).search(np.array([0, 1]), 5)
    assert items.shape == (2, 5)
    assert (items[:, 3:] == -1).all() and not (items == 3).any()


def test_search_ignores_excluded_ids_outside_the_catalogue():
    items, _ = EASE(regularization=1.0).fit(*_interactions(EASE_X)).search(
        np.array([2]), 1, exclude=[np.array([1, 7, -1])])
    np.testing.assert_array_equal(items, [[0]])


# ItemKNN, X (4 users x 3 items): column norms 1, sqrt 2, sqrt 3; co-counts all 1, so
#   [[0, 0, 1],      cos(0, 1) = 1/sqrt 2 = .7071, cos(0, 2) = 1/sqrt 3 = .5774,
#    [0, 0, 1],      cos(1, 2) = 1/sqrt 6 = .4082.
#    [0, 1, 0],   All neighbours: user 0 (item 2) scores row 2 of S = [.5774, .4082, 0].
#    [1, 1, 1]]   One neighbour per item (column): item 0 keeps item 1, item 1 keeps item 0,
#                 item 2 keeps item 0; user 0 then scores [0, 0, 0], user 2 (item 1) [.7071, 0, 0].
KNN_X = [[0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1]]
C01, C02, C12 = 1 / np.sqrt(2), 1 / np.sqrt(3), 1 / np.sqrt(6)


def test_item_knn_scores_sum_cosine_similarities_of_the_users_items():
    model = ItemKNN(neighbours=2).fit(*_interactions(KNN_X))
    np.testing.assert_allclose(model.weights_.toarray(),
                               [[0, C01, C02], [C01, 0, C12], [C02, C12, 0]], atol=1e-6)
    np.testing.assert_allclose(model.scores(np.array([0])), [[C02, C12, 0]], atol=1e-6)


def test_item_knn_keeps_only_the_top_neighbours_of_each_item():
    model = ItemKNN(neighbours=1).fit(*_interactions(KNN_X))
    np.testing.assert_allclose(model.weights_.toarray(),
                               [[0, C01, C02], [C01, 0, 0], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(model.scores(np.array([0, 2])), [[0, 0, 0], [C01, 0, 0]],
                               atol=1e-6)


def test_item_knn_search_honours_exclusions_and_pads_with_minus_one():
    items, _ = ItemKNN(neighbours=2).fit(*_interactions(KNN_X)).search(
        np.array([0, 3]), 3, exclude=[np.array([2]), np.array([0, 1, 2])])
    np.testing.assert_array_equal(items, [[0, 1, -1], [-1, -1, -1]])


@pytest.mark.parametrize("model", [EASE(regularization=0), EASE(regularization=-1.0),
                                   EASE(regularization=float("nan")), ItemKNN(neighbours=0),
                                   ItemKNN(neighbours=2.5), ItemKNN(neighbours=True)],
                         ids=repr)
def test_bad_settings_are_refused_when_fit_starts(model):
    with pytest.raises(ValueError, match="must be"):
        model.fit(*_interactions(EASE_X))


def test_interactions_outside_the_matrix_are_refused():
    with pytest.raises(ValueError, match=r"item_idx must lie in \[0, 3\)"):
        EASE().fit(np.array([0, 1]), np.array([0, 3]), 2, 3)


def test_scoring_before_fit_is_refused():
    with pytest.raises(ValueError, match="must be fitted"):
        ItemKNN().search(np.array([0]), 1)


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be positive"):
        EASE(regularization=1.0).fit(*_interactions(EASE_X)).search(np.array([0]), 0)
