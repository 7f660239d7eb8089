"""Duplicate items (L1.3): the same content uploaded twice under two ids is one item.

Runs on the catalogue before anything counts interactions. Items are compared only within a
block of items that share what a copy keeps: the BLOCK_COLUMNS creator, duration_seconds and
year, each where the catalogue has it, and the numbers of the title (a catalogue with none of
the columns is blocked by title numbers alone, and titles decide). Two titles match when they
carry the same numbers (digits, Roman numerals, number words: "Part II" is not "Part I",
"Hamlet (1948)" is not "Hamlet (1996)") and are equal after normalisation or nearly equal (a
dropped character, a case change). Every copy maps to one canonical id: the member of its group
with the most events (the one users know), ties to the smallest id.

A block is never compared pair by pair: equal normalised titles are grouped, and nearly equal
ones are only compared when they share one of their rarest character 3-grams (prefix
filtering) and enough 3-grams overall (the count filter). Both filters are exact for the
similarity bound, so the matches are those of comparing every pair, at near-linear cost in the
catalogue (a million titles in seconds).
"""
from __future__ import annotations

import functools
import re
from difflib import SequenceMatcher

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

BLOCK_COLUMNS = ("creator", "duration_seconds", "year")
# Marks that uploaders add to a re-upload's title; they do not make it other content.
REUPLOAD_MARKS = re.compile(r"\((hd|\d)\)|\[reupload\]|- full\b", re.IGNORECASE)
NOT_ALPHANUMERIC = re.compile(r"[^0-9a-z]+")
WORDS = re.compile(r"[0-9]+|[A-Za-z]+")


def normalize_title(title: str) -> str:
    text = REUPLOAD_MARKS.sub(" ", str(title).lower())
    return NOT_ALPHANUMERIC.sub(" ", text).strip()


# Roman numerals as words: II, IV, XIII in upper case; in lower case only words of two letters
# or more made of i, v, x (ii, iv, xiii), so that "mix", "civil" or a lone "v" are not numbers.
ROMAN = re.compile(r"M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})")
LOWER_ROMAN = re.compile(r"[ivx]{2,}")
ROMAN_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}
NUMBER_WORDS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
NUMBER_WORDS.update({w: n for n, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth".split(), 1)})


def roman_value(word: str) -> int | None:
    """The value of a Roman numeral word ("XIV" -> 14), None for any other word."""
    if not word or not (word.isupper() or LOWER_ROMAN.fullmatch(word)) \
            or not ROMAN.fullmatch(word.upper()):
        return None
    values = [ROMAN_VALUES[c] for c in word.upper()]
    return sum(-v if v < nxt else v for v, nxt in zip(values, values[1:] + [0]))


def title_numbers(title: str) -> tuple[int, ...]:
    """The numbers a title carries, in order: digits, Roman numerals and number words.

    A re-upload keeps them; sequels, volumes, episodes and remakes (a year in the title) differ
    in them, so two titles with different numbers are never the same item.
    """
    text = REUPLOAD_MARKS.sub(" ", str(title))
    values = (word_number(word) for word in WORDS.findall(text))
    return tuple(v for v in values if v is not None)


@functools.lru_cache(maxsize=1 << 16)
def word_number(word: str) -> int | None:
    """The number one word of a title stands for (digits, a Roman numeral, a number word), else
    None; cached, since a catalogue's titles share their words (a million titles, 3M words)."""
    if word.isdigit():
        return int(word)
    value = roman_value(word)
    if value is not None:
        return value
    return NUMBER_WORDS.get(word.lower())


def titles_match(a: str, b: str, min_similarity: float, numbers_a: tuple | None = None,
                 numbers_b: tuple | None = None) -> bool:
    """Whether normalised titles `a` and `b` name the same content; `numbers_*` are the raw
    titles' `title_numbers` (default: the digits of the normalised titles)."""
    numbers_a = numbers_a if numbers_a is not None else tuple(map(int, re.findall(r"\d+", a)))
    numbers_b = numbers_b if numbers_b is not None else tuple(map(int, re.findall(r"\d+", b)))
    if numbers_a != numbers_b:                 # sequels, volumes, episodes, remakes differ
        return False
    return nearly_equal(a, b, min_similarity)


def nearly_equal(a: str, b: str, min_similarity: float) -> bool:
    """Whether two normalised titles are equal or their difflib ratio reaches min_similarity."""
    if a == b:
        return True
    if min(len(a), len(b)) < min_similarity * max(len(a), len(b)):
        return False
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # cheap upper bounds first: most pairs in a block are far apart
    return (matcher.real_quick_ratio() >= min_similarity and matcher.quick_ratio() >= min_similarity
            and matcher.ratio() >= min_similarity)


def blocking_columns(items: pd.DataFrame) -> list[str]:
    """The BLOCK_COLUMNS this catalogue has values in (none: titles alone decide)."""
    return [c for c in BLOCK_COLUMNS if c in items and items[c].notna().any()]


def canonical_ids(items: pd.DataFrame, event_counts: pd.Series | None = None,
                  min_similarity: float = 0.9) -> pd.DataFrame:
    """Maps every item to its canonical id.

    Args:
      items: the catalogue; `item_id` and `title`, plus any of the BLOCK_COLUMNS `creator`,
        `duration_seconds`, `year` (one that is absent or null everywhere is not used).
      event_counts: events per item id; the most-watched member of a group becomes canonical.
      min_similarity: difflib ratio above which two normalised titles are the same.
    Returns:
      a frame [item_id, canonical_id, group_size] with one row per catalogue item.
    """
    if "title" not in items or "item_id" not in items:
        raise ValueError("duplicate detection needs the catalogue's 'item_id' and 'title' columns")
    frame = items[["item_id"]].reset_index(drop=True)
    titles = items["title"].fillna("").astype(str).reset_index(drop=True)
    unique = pd.Series(titles.unique())        # each distinct title is parsed once
    frame["norm"] = titles.map(dict(zip(unique, unique.map(normalize_title))))
    numbers = dict(zip(unique, unique.map(title_numbers)))
    frame["numbers"] = titles.map(lambda title: ",".join(map(str, numbers[title])))
    block_keys = ["numbers"]
    for c in blocking_columns(items):
        frame[c] = items[c].astype(str).to_numpy()
        block_keys.append(c)
    counts = (event_counts if event_counts is not None else pd.Series(dtype=float))
    frame["events"] = frame["item_id"].map(counts).fillna(0)

    # Items with equal normalised titles in one block are one item (a "variant"); nearly
    # equal variants of a block are then joined by their matches.
    titled = np.flatnonzero(frame["norm"].to_numpy() != "")
    keyed = frame.iloc[titled]
    variant = keyed.groupby([*block_keys, "norm"], sort=False).ngroup().to_numpy()
    first = np.unique(variant, return_index=True)[1]
    block = keyed.groupby(block_keys, sort=False).ngroup().to_numpy()[first]
    norms = keyed["norm"].to_numpy()[first]
    if min_similarity < 1.0:
        a, b = near_duplicate_pairs(norms, block, min_similarity)
        # a block's titles carry the same numbers (its key): only the texts are left to compare
        same = np.fromiter((nearly_equal(norms[i], norms[j], min_similarity)
                            for i, j in zip(a, b)), bool, len(a))
        a, b = a[same], b[same]
    else:
        a = b = np.empty(0, np.int64)
    graph = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(len(norms), len(norms)))
    component = connected_components(graph, directed=False)[1]
    root = np.arange(len(frame)) + len(norms)        # untitled items: alone
    root[titled] = component[variant]
    frame["root"] = root

    best = (frame.sort_values(["events", "item_id"], ascending=[False, True])
            .drop_duplicates("root").set_index("root")["item_id"])
    frame["canonical_id"] = frame["root"].map(best).astype(np.int64)
    frame["group_size"] = frame.groupby("root")["item_id"].transform("size")
    return frame[["item_id", "canonical_id", "group_size"]].reset_index(drop=True)


QGRAM = 3        # characters per gram of the candidate filters


def max_edits(length: np.ndarray, min_similarity: float) -> np.ndarray:
    """The most insertions and deletions that can separate a title of `length` characters from
    any title it matches: ratio = 2M / (la + lb) >= s allows la + lb - 2M <= (1 - s)(la + lb),
    and the partner is at most la / s long."""
    if min_similarity <= 0:
        return np.full(len(length), np.iinfo(np.int64).max // 4, np.int64)
    bound = (1 - min_similarity) * (1 + 1 / min_similarity) * np.asarray(length, np.float64)
    return np.floor(bound + 1e-9).astype(np.int64)


def near_duplicate_pairs(norms: np.ndarray, block: np.ndarray, min_similarity: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a < b, positions in `norms`) of distinct normalised titles of one block
    that can reach `min_similarity`; every pair that does is among them.

    k insertions and deletions destroy at most k x QGRAM of a title's distinct 3-grams, so a
    match shares at least max(|A|, |B|) - k x QGRAM of them (the count filter), and then shares
    one of each title's k x QGRAM + 1 rarest (prefix filtering: the candidates). A title too
    short for the bound to say anything is paired with every title of its block.
    """
    n = len(norms)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    sizes = np.bincount(block, minlength=int(block.max()) + 1 if n else 0)
    crowded = np.flatnonzero(sizes[block] >= 2) if n else np.empty(0, np.int64)
    if len(crowded) == 0:
        return empty
    vocabulary: dict[str, int] = {}
    rows, grams = [], []
    for row, position in enumerate(crowded):
        text = norms[position]
        for gram in {text[i:i + QGRAM] for i in range(len(text) - QGRAM + 1)}:
            rows.append(row)
            grams.append(vocabulary.setdefault(gram, len(vocabulary)))
    rows, grams = np.asarray(rows, np.int64), np.asarray(grams, np.int64)
    present = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, grams)),
                            shape=(len(crowded), len(vocabulary)))
    n_grams = np.bincount(rows, minlength=len(crowded))
    length = np.fromiter((len(norms[p]) for p in crowded), np.int64, len(crowded))
    edits = max_edits(length, min_similarity)
    short = n_grams - edits * QGRAM < 1
    crowded_block = block[crowded]

    # prefix filtering: each title's rarest grams (ties by gram id), keyed by its block
    frequency = np.bincount(grams, minlength=len(vocabulary))
    order = np.lexsort((grams, frequency[grams], rows))
    rows_sorted, grams_sorted = rows[order], grams[order]
    rank = np.arange(len(rows_sorted)) - np.searchsorted(rows_sorted, rows_sorted)
    keep = ~short[rows_sorted]
    keep[keep] = rank[keep] <= edits[rows_sorted[keep]] * QGRAM
    key = crowded_block[rows_sorted[keep]] * np.int64(len(vocabulary)) + grams_sorted[keep]
    a, b = _pairs_sharing(key, rows_sorted[keep])
    sa, sb = _short_title_pairs(np.flatnonzero(short), crowded_block, length, min_similarity)
    a, b = np.concatenate([a, sa]), np.concatenate([b, sb])
    if len(a) == 0:
        return empty
    pair = np.unique(np.minimum(a, b) * np.int64(len(crowded)) + np.maximum(a, b))
    a, b = pair // len(crowded), pair % len(crowded)

    # the length bound of titles_match, then the count filter
    la, lb = length[a], length[b]
    fits = np.minimum(la, lb) >= min_similarity * np.maximum(la, lb)
    a, b = a[fits], b[fits]
    shared = np.zeros(len(a), np.int64)
    for s in range(0, len(a), 1_000_000):
        sl = slice(s, s + 1_000_000)
        shared[sl] = np.asarray(present[a[sl]].multiply(present[b[sl]]).sum(axis=1)).ravel()
    pair_edits = np.floor((1 - min_similarity) * (length[a] + length[b]) + 1e-9).astype(np.int64)
    enough = shared >= np.maximum(n_grams[a], n_grams[b]) - pair_edits * QGRAM
    return crowded[a[enough]], crowded[b[enough]]


def _short_title_pairs(short: np.ndarray, block: np.ndarray, length: np.ndarray,
                       min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Each title in `short` paired with every title of its block whose length it can match."""
    if len(short) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    width = np.int64(length.max() + 1)
    order = np.argsort(block * width + length, kind="stable")
    sorted_key = (block * width + length)[order]
    longest = length[short] / min_similarity if min_similarity > 0 else np.full(len(short), width)
    lo = np.searchsorted(sorted_key, block[short] * width + np.ceil(min_similarity * length[short]
                                                                    - 1e-9).astype(np.int64))
    hi = np.searchsorted(sorted_key, block[short] * width + np.minimum(
        np.floor(longest + 1e-9), width - 1).astype(np.int64), side="right")
    count = hi - lo
    a = np.repeat(short, count)
    b = order[np.repeat(lo, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count,
                                                                          count)]
    distinct = a != b
    return a[distinct], b[distinct]


def _pairs_sharing(key: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of distinct members with the same key (members may repeat across keys)."""
    if len(key) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(key, kind="stable")
    key, member = key[order], member[order]
    end = np.searchsorted(key, key, side="right")
    later = end - np.arange(len(key)) - 1              # members after each one in its key
    first = np.repeat(np.arange(len(key)), later)
    step = np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    a, b = member[first], member[first + 1 + step]
    distinct = a != b
    return a[distinct], b[distinct]
