"""Unsafe content (L1.4): NSFW, harmful and illegal items are kept out of training.

A filter looks at the catalogue and names the unsafe item ids; the dataset workflow then drops
their events. Filters are pluggable (`UnsafeFilter`): a moderation flag column, a block list file,
and a title classifier trained on the flagged items, which finds unsafe items that moderation
missed. Several filters combine by union.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd


class UnsafeFilter(Protocol):
    name: str

    def unsafe_items(self, items: pd.DataFrame) -> np.ndarray:
        """The ids of the catalogue's items this filter keeps out."""

    def cannot_run(self, items: pd.DataFrame) -> str | None:
        """Why this filter cannot run on this catalogue, or None when it can."""


@dataclass
class FlagFilter:
    """Items whose moderation flag column is true."""
    column: str = "unsafe"
    name: str = "flag"

    def cannot_run(self, items: pd.DataFrame) -> str | None:
        return None if self.column in items else f"the catalogue has no column '{self.column}'"

    def unsafe_items(self, items: pd.DataFrame) -> np.ndarray:
        if self.column not in items:
            raise ValueError(f"unsafe filter 'flag': the catalogue has no column '{self.column}'")
        return items.loc[items[self.column].fillna(False).astype(bool), "item_id"].to_numpy()


@dataclass
class BlockListFilter:
    """Items listed in a text file, one item id a line; '#' starts a comment."""
    path: str
    name: str = "blocklist"

    def cannot_run(self, items: pd.DataFrame) -> str | None:
        return None if Path(self.path).is_file() else f"no block list file at {self.path}"

    def unsafe_items(self, items: pd.DataFrame) -> np.ndarray:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"unsafe filter 'blocklist': no block list file at {path}")
        ids = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if not text.lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected one integer item id, got {text!r}")
            ids.append(int(text))
        return items.loc[items["item_id"].isin(ids), "item_id"].to_numpy()


@dataclass
class TitleClassifierFilter:
    """A bag-of-words logistic regression on titles, trained on the flagged items.

    Moderation flags are incomplete; the words of flagged titles find the unflagged ones. Items
    with a predicted probability of at least `threshold` are unsafe. Needs at least a few
    flagged and unflagged titles to learn from.
    """
    flag_column: str = "unsafe"
    threshold: float = 0.7   # on synthetic data: precision 0.84, recall 0.86 against the truth
    name: str = "title_classifier"
    min_examples: int = 5    # flagged and unflagged titles each, at least, to learn from

    def cannot_run(self, items: pd.DataFrame) -> str | None:
        if "title" not in items or items["title"].isna().all():
            return "the catalogue has no titles"
        if self.flag_column not in items:
            return f"the catalogue has no column '{self.flag_column}' to learn from"
        titled = items["title"].notna()
        flagged = items[self.flag_column].fillna(False).astype(bool) & titled
        if flagged.sum() < self.min_examples or (titled & ~flagged).sum() < self.min_examples:
            return (f"needs at least {self.min_examples} flagged and {self.min_examples} "
                    f"unflagged titles to train on, got {int(flagged.sum())} flagged and "
                    f"{int((titled & ~flagged).sum())} unflagged")
        return None

    def unsafe_items(self, items: pd.DataFrame) -> np.ndarray:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression

        titles = items["title"].fillna("").astype(str)
        labels = items[self.flag_column].fillna(False).astype(bool).to_numpy()
        problem = self.cannot_run(items)
        if problem:
            raise ValueError(f"unsafe filter 'title_classifier': {problem}")
        vectorizer = CountVectorizer(binary=True, token_pattern=r"[a-z]{3,}", lowercase=True)
        features = vectorizer.fit_transform(titles)
        model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
        model.fit(features, labels)
        score = model.predict_proba(features)[:, 1]
        return items.loc[score >= self.threshold, "item_id"].to_numpy()


FILTERS = {"flag": FlagFilter, "blocklist": BlockListFilter, "title_classifier": TitleClassifierFilter}


def build_filters(specs: list[dict]) -> list[UnsafeFilter]:
    """Filters from config entries like {"kind": "blocklist", "path": "blocked.txt"}."""
    out = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in FILTERS:
            raise ValueError(f"unsafe filter kind {kind!r} is unknown; expected one of "
                             f"{', '.join(FILTERS)}")
        out.append(FILTERS[kind](**spec))
    return out


def runnable_filters(specs: list[dict], items: pd.DataFrame
                     ) -> tuple[list[dict], list[tuple[dict, str]]]:
    """The config entries whose filter can run on `items`, and (entry, why not) for the rest."""
    ok, skipped = [], []
    for spec, built in zip(specs, build_filters(specs)):
        problem = built.cannot_run(items)
        if problem:
            skipped.append((spec, problem))
        else:
            ok.append(spec)
    return ok, skipped


def unsafe_item_table(items: pd.DataFrame, filters: list[UnsafeFilter]) -> pd.DataFrame:
    """[item_id, filters]: each unsafe item once, with the names of the filters that caught it."""
    caught = [pd.DataFrame({"item_id": f.unsafe_items(items), "filter": f.name}) for f in filters]
    if not caught:
        return pd.DataFrame({"item_id": pd.Series(dtype=np.int64), "filters": pd.Series(dtype=str)})
    table = pd.concat(caught, ignore_index=True)
    return (table.groupby("item_id")["filter"].agg(lambda s: ",".join(sorted(set(s))))
            .rename("filters").reset_index())
