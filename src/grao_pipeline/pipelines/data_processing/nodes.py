"""Raw rows -> clean ``(prompt, reference[, rejected])`` rows -> train/validation/test.

Every row that is dropped is counted, by reason, in the data report: malformed rows
(empty text, wrong types, no assistant turn, ...), and filtered rows (length, duplicates).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter

import datasets

from grao_pipeline.alignment.config import DataConfig

log = logging.getLogger(__name__)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
# Columns the formats read; any other key of data_processing.columns is kept as is.
STRUCTURAL = ("prompt", "reference", "rejected", "chosen", "turns")


def _mapped(params: DataConfig, name: str) -> str:
    return params.columns.get(name, name)


def _extras(params: DataConfig) -> dict[str, str]:
    """Extra columns to keep: our name -> raw column."""
    return {k: v for k, v in params.columns.items() if k not in STRUCTURAL}


def _likely_format(columns: list[str]) -> str | None:
    if {"chosen", "rejected"} <= set(columns):
        return "hh_rlhf"
    if "turns" in columns:
        return "chitchat"
    return None


def _require_columns(raw: datasets.Dataset, params: DataConfig, names: list[str]) -> None:
    likely = _likely_format(raw.column_names)
    for name in [*names, *_extras(params)]:
        column = _mapped(params, name)
        if column not in raw.column_names:
            fix = (f"this looks like {likely} data: set data_processing.format: {likely}"
                   if likely and likely != params.format and name in STRUCTURAL else
                   f"map it with data_processing.columns.{name}: <column>")
            raise KeyError(f"column {column!r} (for {name!r}) not in the raw dataset, which has "
                           f"{raw.column_names} (format {params.format!r}); {fix}")


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """Split an HH-RLHF transcript at its last assistant turn: (prompt, answer).

    A single-turn prompt is the human text; a multi-turn prompt keeps the earlier
    dialogue as "Human: … Assistant: … Human: …" text, so no context is lost.
    """
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("no assistant turn")
    context, answer = transcript[:cut], transcript[cut + len(ASSISTANT):]
    prompt = context.replace(HUMAN, "", 1) if context.count(HUMAN) <= 1 else context
    return prompt.strip(), answer.strip()


def _chitchat_pairs(raw: datasets.Dataset, params: DataConfig, bad: Counter) -> list[dict]:
    rows = []
    for conv in raw:
        turns = conv[_mapped(params, "turns")]
        for turn, reply in zip(turns, turns[1:], strict=False):
            if not turn["text"].strip().endswith("?"):
                continue
            if turn["sender"] == reply["sender"]:
                bad["same_sender_reply"] += 1
                continue
            rows.append({"prompt": turn["text"], "reference": reply["text"],
                         **{k: conv[v] for k, v in _extras(params).items()}})
    return rows


def _hh_pairs(raw: datasets.Dataset, params: DataConfig, bad: Counter) -> list[dict]:
    chosen_col, rejected_col = _mapped(params, "chosen"), _mapped(params, "rejected")
    rows = []
    for row in raw:
        chosen, rejected = row[chosen_col], row[rejected_col]
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            bad["wrong_type"] += 1
            continue
        try:
            prompt, reference = split_hh_transcript(chosen)
            rejected_prompt, rejected_answer = split_hh_transcript(rejected)
        except ValueError:
            bad["no_assistant_turn"] += 1
            continue
        if rejected_prompt != prompt:
            bad["rejected_prompt_mismatch"] += 1
            continue
        rows.append({"prompt": prompt, "reference": reference, "rejected": rejected_answer,
                     **{k: row[v] for k, v in _extras(params).items()}})
    return rows


def _column_pairs(raw: datasets.Dataset, params: DataConfig, bad: Counter) -> list[dict]:
    names = ["prompt", "reference"] + (["rejected"] if _mapped(params, "rejected") in raw.column_names else [])
    rows = []
    for row in raw:
        values = {n: row[_mapped(params, n)] for n in names}
        if not all(isinstance(v, str) for v in values.values()):
            bad["wrong_type"] += 1
            continue
        rows.append({**values, **{k: row[v] for k, v in _extras(params).items()}})
    return rows


def extract_pairs(raw: datasets.Dataset, params: DataConfig) -> tuple[list[dict], dict]:
    """Raw dataset -> rows of ``prompt``, ``reference`` (and ``rejected`` where the data
    has preference pairs), plus a report of malformed rows by reason."""
    bad: Counter = Counter()
    if params.format == "chitchat":
        _require_columns(raw, params, ["turns"])
        rows = _chitchat_pairs(raw, params, bad)
    elif params.format == "hh_rlhf":
        _require_columns(raw, params, ["chosen", "rejected"])
        rows = _hh_pairs(raw, params, bad)
    else:
        _require_columns(raw, params, ["prompt", "reference"])
        rows = _column_pairs(raw, params, bad)
    kept = []
    for row in rows:
        if not row["prompt"].strip():
            bad["empty_prompt"] += 1
        elif not row["reference"].strip() or ("rejected" in row and not row["rejected"].strip()):
            bad["empty_answer"] += 1
        else:
            kept.append(row)
    report = {"format": params.format, "raw_rows": len(raw), "pairs_extracted": len(kept),
              "malformed": dict(sorted(bad.items())), "malformed_total": sum(bad.values())}
    if bad:
        log.warning("data_processing: %d malformed rows dropped: %s", sum(bad.values()), dict(bad))
    return kept, report


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def clean_and_filter(rows: list[dict], extract_report: dict,
                     params: DataConfig) -> tuple[list[dict], dict]:
    """Normalise whitespace, drop too short / too long rows and duplicate prompts
    (case-insensitive; the first occurrence wins). Extends the data report."""
    dropped: Counter = Counter()
    seen: set[str] = set()
    kept = []
    for row in rows:
        row = {k: _clean(v) if isinstance(v, str) else v for k, v in row.items()}
        answers = [row["reference"]] + ([row["rejected"]] if "rejected" in row else [])
        if min(len(row["prompt"]), *map(len, answers)) < params.min_chars:
            dropped["too_short"] += 1
        elif len(row["prompt"]) > params.max_prompt_chars:
            dropped["prompt_too_long"] += 1
        elif max(map(len, answers)) > params.max_answer_chars:
            dropped["answer_too_long"] += 1
        elif row["prompt"].lower() in seen:
            dropped["duplicate_prompt"] += 1
        else:
            seen.add(row["prompt"].lower())
            kept.append(row)
    report = {**extract_report, "filtered": dict(sorted(dropped.items())), "rows_kept": len(kept)}
    return kept, report


def _bucket(prompt: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{prompt.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: list[dict], report: dict, params: DataConfig
               ) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset, dict]:
    """Deterministic split by a salted hash of the prompt: the same prompt always lands
    in the same split, whatever the row order or the rows around it."""
    if not rows:
        raise ValueError("data_processing: no rows left after cleaning; see the data report")
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        u = _bucket(row["prompt"], params.seed)
        name = ("test" if u < params.test_fraction else
                "validation" if u < params.test_fraction + params.validation_fraction else "train")
        splits[name].append(row)
    for name, part in splits.items():
        if not part:
            raise ValueError(f"data_processing: the {name} split is empty "
                             f"({len(rows)} rows); use more data or larger fractions")
    report = {**report, "splits": {k: len(v) for k, v in splits.items()}}
    return (*(datasets.Dataset.from_list(splits[k]) for k in ("train", "validation", "test")), report)
