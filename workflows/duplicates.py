"""Duplicate items (L1.3): the same content uploaded twice under two ids is one item.

Runs on the catalogue before anything counts interactions. Items are compared only within a
block of items that share what a copy keeps: the BLOCK_COLUMNS creator, duration_seconds and
year, each where the catalogue has it (a catalogue with none of them is one block, and titles
alone decide). Two titles match when they carry the same numbers (digits, Roman numerals, number
words: "Part II" is not "Part I", "Hamlet (1948)" is not "Hamlet (1996)") and are equal after
normalisation or nearly equal (a dropped character, a case change). Every copy maps to one
canonical id: the member of its group with the most events (the one users know), ties to the
smallest id.
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
    out = []
    for word in re.findall(r"[0-9]+|[A-Za-z]+", text):
        if word.isdigit():
            out.append(int(word))
        elif (value := roman_value(word)) is not None:
            out.append(value)
        elif word.lower() in NUMBER_WORDS:
            out.append(NUMBER_WORDS[word.lower()])
    return tuple(out)


def titles_match(a: str, b: str, min_similarity: float, numbers_a: tuple | None = None,
                 numbers_b: tuple | None = None) -> bool:
    """Whether normalised titles `a` and `b` name the same content; `numbers_*` are the raw
    titles' `title_numbers` (default: the digits of the normalised titles)."""
    numbers_a = numbers_a if numbers_a is not None else tuple(map(int, re.findall(r"\d+", a)))
    numbers_b = numbers_b if numbers_b is not None else tuple(map(int, re.findall(r"\d+", b)))
    if numbers_a != numbers_b:                 # sequels, volumes, episodes, remakes differ
        return False
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
    frame = items[["item_id", "title"]].copy()
    frame["norm"] = items["title"].fillna("").map(normalize_title)
    frame["numbers"] = items["title"].fillna("").map(title_numbers)
    blocks = blocking_columns(items)
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
        numbers = block["numbers"].to_numpy()
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                if titles_match(norms[a], norms[b], min_similarity, numbers[a], numbers[b]):
                    parent[find(ids[b])] = find(ids[a])

    frame["root"] = frame["item_id"].map(find)
    best = (frame.sort_values(["events", "item_id"], ascending=[False, True])
            .drop_duplicates("root").set_index("root")["item_id"])
    frame["canonical_id"] = frame["root"].map(best).astype(np.int64)
    frame["group_size"] = frame.groupby("root")["item_id"].transform("size")
    return frame[["item_id", "canonical_id", "group_size"]].reset_index(drop=True)

