import dataclasses
import json

import pytest

from grao_pipeline.alignment.config import ConfigError, DataConfig
from grao_pipeline.io import ChitchatDataset, HFLoadDataset
from grao_pipeline.pipelines.data_processing.nodes import (
    clean_and_filter,
    extract_pairs,
    split_hh_transcript,
    split_rows,
)


def run_nodes(raw, params):
    rows, report = extract_pairs(raw, params)
    rows, report = clean_and_filter(rows, report, params)
    return split_rows(rows, report, params)


def test_embedded_chitchat_data():
    raw = ChitchatDataset().load()
    params = DataConfig()
    train, val, test, report = run_nodes(raw, params)
    assert report["raw_rows"] == 7168
    assert report["pairs_extracted"] > 25_000
    assert 15_000 < report["rows_kept"] < 25_000
    assert report["splits"] == {"train": len(train), "validation": len(val), "test": len(test)}
    assert len(train) + len(val) + len(test) == report["rows_kept"]
    assert len(test) / report["rows_kept"] == pytest.approx(params.test_fraction, abs=0.01)
    prompts = [set(p.lower() for p in d["prompt"]) for d in (train, val, test)]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2])
    assert all(p.endswith("?") for p in test["prompt"])
    assert all(len(p) <= params.max_prompt_chars for p in train["prompt"])
    # deterministic: same rows, same splits
    again = run_nodes(raw, params)
    assert again[2]["prompt"] == test["prompt"]


HH_ROWS = [
    {"chosen": "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure, start with flour.",
     "rejected": "\n\nHuman: Can you help me bake bread?\n\nAssistant: No."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is tea?\n\nAssistant: A drink.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is tea?\n\nAssistant: Dunno."},
    {"chosen": "\n\nHuman: no assistant turn here", "rejected": "\n\nHuman: nor here"},
    {"chosen": 42, "rejected": "\n\nHuman: x\n\nAssistant: y"},
    {"chosen": "\n\nHuman: Empty answer?\n\nAssistant: ", "rejected": "\n\nHuman: Empty answer?\n\nAssistant: ok"},
    {"chosen": "\n\nHuman: one prompt\n\nAssistant: a", "rejected": "\n\nHuman: another\n\nAssistant: b"},
    {"chosen": "\n\nHuman: \n\nAssistant: answer to nothing", "rejected": "\n\nHuman: \n\nAssistant: b"},
]


@pytest.fixture
def hh_file(tmp_path):
    path = tmp_path / "hh.jsonl"
    # JSON lines with mixed types in a column: give each row as its own object
    path.write_text("\n".join(json.dumps({k: (v if isinstance(v, str) else str(v)) for k, v in r.items()})
                              for r in HH_ROWS))
    return path


def test_hh_transcripts_split_into_prompt_reference_and_rejected():
    prompt, answer = split_hh_transcript(HH_ROWS[1]["chosen"])
    assert answer == "A drink."
    assert prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: What is tea?"
    with pytest.raises(ValueError, match="no assistant turn"):
        split_hh_transcript("\n\nHuman: hi")


def test_hh_fixture_through_load_dataset_with_malformed_rows_reported(hh_file):
    raw = HFLoadDataset(source="json", load_args={"data_files": str(hh_file), "split": "train"}).load()
    params = DataConfig(format="hh_rlhf", test_fraction=0.3, validation_fraction=0.3, seed=3)
    rows, report = extract_pairs(raw, params)
    assert report["raw_rows"] == 7 and report["pairs_extracted"] == 2
    # "42" is a string after JSON round-trip, so row 4 fails as "no assistant turn"
    assert report["malformed"] == {"empty_answer": 1, "empty_prompt": 1, "no_assistant_turn": 2,
                                   "rejected_prompt_mismatch": 1}
    assert report["malformed_total"] == 5
    assert rows[0] == {"prompt": "Can you help me bake bread?", "reference": "Sure, start with flour.",
                       "rejected": "No."}


def test_wrong_types_are_counted():
    import datasets

    raw = datasets.Dataset.from_list([{"q": "hi?", "a": "hello"}, {"q": "x?", "a": None}])
    rows, report = extract_pairs(raw, DataConfig(format="columns", columns={"prompt": "q", "reference": "a"}))
    assert len(rows) == 1 and report["malformed"] == {"wrong_type": 1}


def test_missing_column_is_a_clear_error(hh_file):
    raw = HFLoadDataset(source="json", load_args={"data_files": str(hh_file), "split": "train"}).load()
    with pytest.raises(KeyError, match="column 'question' \\(for 'prompt'\\) not in the raw dataset"):
        extract_pairs(raw, DataConfig(format="columns", columns={"prompt": "question"}))


def test_bad_data_config_is_refused():
    with pytest.raises(ConfigError, match="format"):
        DataConfig(format="csv")
    with pytest.raises(ConfigError, match="columns"):
        DataConfig(columns={"answer": 3})


def test_extra_mapped_columns_are_kept_for_rewards():
    import datasets

    raw = datasets.Dataset.from_list([{"q": "What is 2+3?", "demo": "5", "truth": "5", "id": 1},
                                      {"q": "What is 4+4?", "demo": "9", "truth": "8", "id": 2}])
    cfg = DataConfig(format="columns", columns={"prompt": "q", "reference": "demo", "answer": "truth"})
    rows, _ = extract_pairs(raw, cfg)
    assert rows == [{"prompt": "What is 2+3?", "reference": "5", "answer": "5"},
                    {"prompt": "What is 4+4?", "reference": "9", "answer": "8"}]
    kept, _ = clean_and_filter(rows, {}, dataclasses.replace(cfg, min_chars=1))
    assert [r["answer"] for r in kept] == ["5", "8"]
    with pytest.raises(KeyError, match="column 'nope' \\(for 'answer'\\)"):
        extract_pairs(raw, DataConfig(format="columns", columns={"prompt": "q", "reference": "demo",
                                                                 "answer": "nope"}))
