"""Duplicate items (L1.3): the same content uploaded twice under two ids is one item.

Runs on the catalogue before anything counts interactions. Items are compared only within a
block of items that share what a copy keeps (creator, duration, year, where known); two titles
match when they are equal after normalisation, or nearly equal (a dropped character, a case
change) with the same numbers in them. Every copy maps to one canonical id: the member of its
group with the most events (the one users know), ties to the smallest id.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher

import numpy as np
import pandas as pd

BLOCK_COLUMNS = ("creator", "duration_seconds", "year")
# Marks that uploaders add to a re-upload's title; they do not make it other content.
REUPLOAD_MARKS = re.compile(r"\((hd|\d)\)|\[reupload\]|- full\b", re.IGNORECASE)


def normalize_title(title: str) -> str:
    text = REUPLOAD_MARKS.sub(" ", str(title).lower())
    return re.sub(r"[^0-9a-z]+", " ", text).strip()


def titles_match(a: str, b: str, min_similarity: float) -> bool:
    if a == b:
        return True
    if re.findall(r"\d+", a) != re.findall(r"\d+", b):   # sequels and episode numbers differ
        return False
    if min(len(a), len(b)) < min_similarity * max(len(a), len(b)):
        return False
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # cheap upper bounds first: most pairs in a block are far apart
    return (matcher.real_quick_ratio() >= min_similarity and matcher.quick_ratio() >= min_similarity
            and matcher.ratio() >= min_similarity)


def canonical_ids(items: pd.DataFrame, event_counts: pd.Series | None = None,
                  min_similarity: float = 0.9) -> pd.DataFrame:
    """Maps every item to its canonical id.

    Args:
      items: the catalogue; `item_id` and `title`, plus any of `creator`, `duration_seconds`,
        `year` (a block column that is absent or null everywhere is not used).
      event_counts: events per item id; the most-watched member of a group becomes canonical.
      min_similarity: difflib ratio above which two normalised titles are the same.
    Returns:
      a frame [item_id, canonical_id, group_size] with one row per catalogue item.
    """
    if "title" not in items or "item_id" not in items:
        raise ValueError("duplicate detection needs the catalogue's 'item_id' and 'title' columns")
    frame = items[["item_id", "title"]].copy()
    frame["norm"] = items["title"].fillna("").map(normalize_title)
    blocks = [c for c in BLOCK_COLUMNS if c in items and items[c].notna().any()]
    for c in blocks:
        frame[c] = items[c].astype(str)
    counts = (event_counts if event_counts is not None else pd.Series(dtype=float))
    frame["events"] = frame["item_id"].map(counts).fillna(0)

    parent = {i: i for i in frame["item_id"]}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    has_title = frame["norm"] != ""
    keys = blocks[0] if len(blocks) == 1 else blocks
    grouped = frame[has_title].groupby(keys, sort=False) if blocks else [(None, frame[has_title])]
    for _, block in grouped:
        if len(block) < 2:
            continue
        ids, norms = block["item_id"].to_numpy(), block["norm"].to_numpy()
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                if titles_match(norms[a], norms[b], min_similarity):
                    parent[find(ids[b])] = find(ids[a])

    frame["root"] = frame["item_id"].map(find)
    best = (frame.sort_values(["events", "item_id"], ascending=[False, True])
            .drop_duplicates("root").set_index("root")["item_id"])
    frame["canonical_id"] = frame["root"].map(best).astype(np.int64)
    frame["group_size"] = frame.groupby("root")["item_id"].transform("size")
    return frame[["item_id", "canonical_id", "group_size"]].reset_index(drop=True)

