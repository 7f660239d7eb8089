"""Simple strong peers for candidate generation: item-to-item models fitted on the binary
user-item matrix X, scoring a user's items as X W (EASE: W in closed form; ItemKNN: pruned
cosine similarities). Benchmarks set our learned generators against them; numpy/scipy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp


class ItemItemModel:
    """Scores = X W for an [n_items, n_items] item-item matrix W that a subclass derives from X.

    Candidates are the items `fit` saw at least once; items without a training interaction are
    never returned.
    """

    def fit(self, user_idx: np.ndarray, item_idx: np.ndarray, n_users: int,
            n_items: int) -> "ItemItemModel":
        """Learns W from interactions given as parallel arrays of row indices.

        Args:
          user_idx: [n_interactions] user rows in [0, n_users).
          item_idx: [n_interactions] item columns in [0, n_items); repeated pairs count once.
          n_users, n_items: the shape of X.
        Returns:
          self.
        """
        self._check_params()
        user_idx, item_idx = np.asarray(user_idx), np.asarray(item_idx)
        if user_idx.shape != item_idx.shape or user_idx.ndim != 1:
            raise ValueError(f"user_idx {user_idx.shape} and item_idx {item_idx.shape} must be "
                             "1-d arrays of one entry per interaction")
        for name, idx, size in (("user_idx", user_idx, n_users), ("item_idx", item_idx, n_items)):
            if len(idx) and (idx.min() < 0 or idx.max() >= size):
                raise ValueError(f"{name} must lie in [0, {size}), got [{idx.min()}, {idx.max()}]")
        x = sp.csr_matrix((np.ones(len(user_idx), np.float64), (user_idx, item_idx)),
                          shape=(n_users, n_items))
        x.data[:] = 1.0                      # binary: duplicates were summed by the constructor
        self.user_items_ = x
        self.fitted_items_ = np.asarray(x.sum(axis=0)).ravel() > 0
        self.weights_ = self._item_weights(x)
        return self

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """[n, n_items] scores X[user_rows] W of the given [n] user rows."""
        if not hasattr(self, "weights_"):
            raise ValueError(f"{type(self).__name__} must be fitted before it scores users")
        user_rows = np.asarray(user_rows)
        n_users = self.user_items_.shape[0]
        if len(user_rows) and (user_rows.min() < 0 or user_rows.max() >= n_users):
            raise ValueError(f"user rows must lie in [0, {n_users}), got "
                             f"[{user_rows.min()}, {user_rows.max()}]")
        out = self.user_items_[user_rows] @ self.weights_
        return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)

    def search(self, users: np.ndarray, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for each user, like `models.candidates` generators.

        Args:
          users: [n_users] user rows of X.
          k: results per user.
          exclude: per user, item indices that must not be returned (ids outside the catalogue
            are ignored).
        Returns:
          item indices [n_users, k] and scores [n_users, k], best first (ties: lower index
          first); -1 / -inf where fewer than k items remain.
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        scores = self.scores(users)
        n_items = scores.shape[1]
        scores[:, ~self.fitted_items_] = -np.inf
        if exclude is not None:
            if len(exclude) != len(scores):
                raise ValueError(f"exclude has {len(exclude)} rows, one per user ({len(scores)}) "
                                 "is needed")
            for row, items in enumerate(exclude):
                items = np.asarray(items, np.int64)
                scores[row, items[(items >= 0) & (items < n_items)]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        top = np.where(np.isneginf(top_scores), -1, top)
        pad = k - top.shape[1]                # k beyond the catalogue size
        return (np.pad(top, ((0, 0), (0, pad)), constant_values=-1),
                np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"

    def _check_params(self) -> None:
        raise NotImplementedError

    def _item_weights(self, x: sp.csr_matrix):
        raise NotImplementedError


class EASE(ItemItemModel):
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019): B = argmin ||X - XB||^2 +
    lambda ||B||^2 subject to diag(B) = 0, in closed form: P = (X'X + lambda I)^-1,
    B = -P / diag(P) (column-wise), diag(B) = 0. One n_items x n_items inverse.

    Args:
      regularization: lambda > 0; larger shrinks B towards zero (towards popularity).
    """

    def __init__(self, regularization: float = 250.0):
        self.regularization = regularization

    def _check_params(self) -> None:
        if isinstance(self.regularization, bool) or not self.regularization > 0:
            raise ValueError(f"EASE regularization (lambda) must be > 0, got "
                             f"{self.regularization!r}")

    def _item_weights(self, x: sp.csr_matrix) -> np.ndarray:
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.regularization
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        return b.astype(np.float32)


class ItemKNN(ItemItemModel):
    """Item-based k-nearest neighbours: cosine similarity between the item columns of X, each
    item keeping its `neighbours` most similar items; a user's score for item j sums j's
    similarities to the user's items. No self-similarity.

    Args:
      neighbours: positive number of neighbours kept per item.
    """

    def __init__(self, neighbours: int = 100):
        self.neighbours = neighbours

    def _check_params(self) -> None:
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, (int, np.integer)) \
                or self.neighbours <= 0:
            raise ValueError(f"ItemKNN neighbours must be a positive integer, got "
                             f"{self.neighbours!r}")

    def _item_weights(self, x: sp.csr_matrix) -> sp.csc_matrix:
        gram = (x.T @ x).toarray()
        norms = np.sqrt(np.diag(gram))
        norms[norms == 0] = 1.0               # an unseen item: similarity 0 to all
        sim = gram / norms[:, None] / norms[None, :]
        sim[np.diag_indices_from(sim)] = 0.0
        n_items = sim.shape[0]
        if self.neighbours < n_items:         # per target item (column), its top neighbours
            dropped = np.argpartition(-sim, self.neighbours, axis=0)[self.neighbours:]
            np.put_along_axis(sim, dropped, 0.0, axis=0)
        return sp.csc_matrix(sim.astype(np.float32))
