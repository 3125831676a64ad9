"""Bad inputs, one table: each is refused with a message that names the bad thing, before
anything is written. Cases marked *silent* were once silently wrong (issue 11)."""

import json
import math
import re
import shutil
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from kedro.io import DatasetError

from grao_pipeline.alignment.checkpoints import CheckpointError
from grao_pipeline.alignment.config import ConfigError, DataConfig, EvalConfig, RewardConfig
from grao_pipeline.alignment.methods.grao import GRAOMethodConfig
from grao_pipeline.alignment.methods.sft import SFTConfig, SFTMethod
from grao_pipeline.alignment.models import load_model, save_model
from grao_pipeline.alignment.rewards import CompositeReward, pairwise_verdicts
from grao_pipeline.alignment.trainer import train
from grao_pipeline.alignment.tuning import TuningConfig
from grao_pipeline.io import ChitchatDataset, HFLoadDataset, HFModelDataset
from grao_pipeline.pipelines.data_processing.nodes import extract_pairs, split_rows
from tests.fixtures import gpt2_tokenizer, tiny_model
from tests.pipelines.conftest import TINY_RUN, kedro_run, project  # noqa: F401  (fixture)

ROWS = [{"prompt": "how are you?", "reference": "fine"}, {"prompt": "tea?", "reference": "yes"}]


def reward(components):
    return CompositeReward(RewardConfig(components=components))([p["prompt"] for p in ROWS],
                                                                ["a", "b"], ["c", "d"])


def saved_tiny(path: Path, **change_tokenizer) -> Path:
    bundle = tiny_model(gpt2_tokenizer(), seed=0)
    for attr, value in change_tokenizer.items():
        setattr(bundle.tokenizer, attr, value)
    save_model(bundle, path)
    return path


def truncated_weights(tmp: Path) -> Path:
    path = saved_tiny(tmp / "model")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return path


def pickle_only(tmp: Path) -> Path:
    path = saved_tiny(tmp / "model")
    bundle = load_model(path)
    (path / "model.safetensors").unlink()
    torch.save(bundle.model.state_dict(), path / "pytorch_model.bin")
    return path


def bad_config_json(tmp: Path) -> Path:
    path = saved_tiny(tmp / "model")
    (path / "config.json").write_text("{not json")
    return path


def non_utf8_chitchat(tmp: Path):
    path = tmp / "chat.json"
    path.write_bytes(b'{"c1": {"messages": [[{"sender": "a", "text": "caf\xe9?"}]]}}')
    return ChitchatDataset(path=str(path)).load()


def non_utf8_json_rows(tmp: Path):
    path = tmp / "rows.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9?", "reference": "yes"}\n')
    return HFLoadDataset(source="json", load_args={"data_files": str(path), "split": "train"}).load()


def hh_rows_as_chitchat(tmp: Path):
    raw = datasets.Dataset.from_list([{"chosen": "\n\nHuman: hi?\n\nAssistant: hello",
                                       "rejected": "\n\nHuman: hi?\n\nAssistant: go away"}])
    return extract_pairs(raw, DataConfig(format="chitchat"))


def resume_past_steps(tmp: Path):
    tok = gpt2_tokenizer()
    for steps in (2, 1):
        model, _ = tiny_model(tok, seed=0)
        cfg = SFTConfig(steps=steps, batch_size=2, mixed_precision="fp32", show_progress=False,
                        checkpoint_dir=str(tmp / "ckpt"), checkpoint_every=1)
        train(model, SFTMethod(tok, cfg), ROWS, cfg)


# (id, action taking tmp_path, exception type, message that names the bad thing)
CASES = [
    # config: types before ranges, the field and the value named
    ("silent: bool given as a string", lambda t: GRAOMethodConfig(exploration="flase"),
     ConfigError, "GRAOMethodConfig.exploration = 'flase': must be bool, not str"),
    ("int given as 2.5", lambda t: GRAOMethodConfig(num_generations=2.5),
     ConfigError, "GRAOMethodConfig.num_generations = 2.5: must be int, not float"),
    ("int given as text", lambda t: GRAOMethodConfig(num_generations="abc"),
     ConfigError, "GRAOMethodConfig.num_generations = 'abc': must be int, not str"),
    ("float given as bool", lambda t: GRAOMethodConfig(beta=True),
     ConfigError, "GRAOMethodConfig.beta = True: must be float, not bool"),
    ("steps 0", lambda t: SFTConfig(steps=0), ConfigError, "SFTConfig.steps = 0: must be >= 1"),
    ("G = 1", lambda t: GRAOMethodConfig(num_generations=1), ConfigError, "num_generations = 1: G must be >= 2"),
    ("precision 'no'", lambda t: SFTConfig(mixed_precision="no"),
     ConfigError, "SFTConfig.mixed_precision = 'no': must be one of 'auto', 'bf16', 'fp32'"),
    ("checkpoints without a folder", lambda t: SFTConfig(checkpoint_every=5),
     ConfigError, "SFTConfig.checkpoint_dir = None: is required when checkpoint_every > 0"),
    ("unknown data format", lambda t: DataConfig(format="csv"), ConfigError, "DataConfig.format = 'csv'"),
    ("misspelt search-space key", lambda t: TuningConfig(search_space={"lamda": {"low": 0.0, "high": 1.0}}),
     ConfigError, "TuningConfig.search_space.lamda: 'grao' has no such setting; did you mean 'lam'?"),
    ("do_sample as text", lambda t: EvalConfig(do_sample="yes"),
     ConfigError, "EvalConfig.do_sample = 'yes': must be bool"),
    # rewards
    ("reward block not a mapping", lambda t: RewardConfig(components={"relevance": "high"}),
     ConfigError, "RewardConfig.components.relevance = 'high': must be a mapping"),
    ("reward weight not a number", lambda t: RewardConfig(components={"relevance": {"weight": "high"}}),
     ConfigError, "RewardConfig.components.relevance.weight = 'high': must be a number"),
    ("silent: every reward weight 0",
     lambda t: RewardConfig(components={"relevance": {"weight": 0}, "positivity": {"weight": 0.0}}),
     ConfigError, "every weight is 0"),
    ("unknown reward", lambda t: reward({"helpfulness": {"weight": 1.0}}),
     ValueError, "unknown reward 'helpfulness'"),
    ("reward module missing", lambda t: reward({"no_such_module:f": {"weight": 1.0}}),
     ValueError, "reward 'no_such_module:f' cannot be imported"),
    ("unknown reward option", lambda t: reward({"positivity": {"weight": 1.0, "scale": 2}}),
     ValueError, "rewards.components.positivity: bad options {'scale': 2}"),
    ("reward returns None", lambda t: reward({"tests.helpers:none_reward": {"weight": 1.0}}),
     ValueError, "reward 'tests.helpers:none_reward' returned NoneType"),
    ("reward returns NaN", lambda t: reward({"tests.helpers:half_nan_reward": {"weight": 1.0}}),
     ValueError, "reward 'tests.helpers:half_nan_reward' returned nan for completion 1"),
    ("reward returns too few", lambda t: reward({"tests.helpers:short_reward": {"weight": 1.0}}),
     ValueError, "reward 'tests.helpers:short_reward' returned 1 scores for 2 completions"),
    ("reward returns text", lambda t: reward({"tests.helpers:text_reward": {"weight": 1.0}}),
     ValueError, "reward 'tests.helpers:text_reward' returned 'good' \\(str\\)"),
    ("silent: NaN judged a tie", lambda t: pairwise_verdicts([1.0, math.nan], [1.0, 1.0], 0.05),
     ValueError, "score 1 is nan"),
    # models
    ("model folder missing", lambda t: load_model(t / "nowhere"),
     FileNotFoundError, "no model directory at .*nowhere"),
    ("model folder empty", lambda t: (t / "empty").mkdir() or load_model(t / "empty"),
     FileNotFoundError, "empty has no config.json"),
    ("config.json corrupt", lambda t: load_model(bad_config_json(t)),
     ValueError, "model/config.json"),
    ("weights truncated", lambda t: load_model(truncated_weights(t)),
     ValueError, "model/model.safetensors: not a valid safetensors file"),
    ("pickle weights only", lambda t: load_model(pickle_only(t)),
     ValueError, "only pickle weights \\(pytorch_model.bin\\)"),
    ("tokenizer without pad", lambda t: load_model(saved_tiny(t / "m", pad_token=None)),
     ValueError, "has no pad_token"),
    ("tokenizer without chat template", lambda t: load_model(saved_tiny(t / "m", chat_template=None)),
     ValueError, "has no chat_template"),
    ("hub id written as path", lambda t: HFModelDataset(path=str(t / "HuggingFaceTB/SmolLM2")).load(),
     DatasetError, "write it as 'source: HuggingFaceTB/SmolLM2'"),
    # data
    ("non-UTF-8 bytes in chitchat", non_utf8_chitchat, DatasetError, "chat.json: not UTF-8 at byte 50"),
    ("non-UTF-8 bytes in a json data file", non_utf8_json_rows, DatasetError, "rows.jsonl.*not UTF-8"),
    ("HH data read as chitchat", hh_rows_as_chitchat, KeyError, "set data_processing.format: hh_rlhf"),
    ("mapped column missing",
     lambda t: extract_pairs(datasets.Dataset.from_list(ROWS), DataConfig(format="columns",
                                                                          columns={"answer": "gold"})),
     KeyError, "column 'gold' \\(for 'answer'\\) not in the raw dataset"),
    ("empty train split", lambda t: split_rows(ROWS[:1], {}, DataConfig()),
     ValueError, "the (train|validation|test) split is empty"),
    ("builder name without data files", lambda t: HFLoadDataset(source="json", load_args={"split": "train"}),
     DatasetError, "'json' is a builder: give load_args.data_files"),
    # checkpoints
    ("silent: checkpoint past steps", resume_past_steps, CheckpointError, "past steps=1"),
]


@pytest.mark.parametrize("action, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_it(tmp_path, action, error, message):
    before = set(tmp_path.rglob("*"))
    with pytest.raises(error, match=message) as raised:
        action(tmp_path)
    assert raised.value is not None
    after = set(tmp_path.rglob("*")) - before
    partial = [p for p in after if ".tmp" in p.name]
    assert not partial, partial


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# ---- the silently-wrong cases through `kedro run`: refused before any output --------


@pytest.mark.slow
@pytest.mark.parametrize("section, change, message", [
    ("grao", {"exploration": "flase"}, "exploration = 'flase': must be bool"),
    ("grao", {"num_generations": 2.5}, "num_generations = 2.5: must be int"),
    ("rewards", {"components": {n: {"weight": 0} for n in ("reward_model", "relevance", "positivity",
                                                           "profanity")}},
     "every weight is 0"),
])
def test_kedro_refuses_bad_parameters_before_touching_anything(project, section, change, message):  # noqa: F811
    kedro_run(project, ["data_processing", "sft"])
    before = sorted(p.relative_to(project) for p in (project / "data").rglob("*"))
    params = {**TINY_RUN, section: {**TINY_RUN.get(section, {}), **change}}
    with pytest.raises(Exception, match=re.escape(message)):
        kedro_run(project, ["grao"], params)
    assert sorted(p.relative_to(project) for p in (project / "data").rglob("*")) == before


@pytest.mark.slow
@pytest.mark.parametrize("params, message", [
    # issue 31, case 1: a misspelt section was ignored and the old beta's checkpoint resumed
    ({"graoo": {"beta": 0.0}}, "parameters section 'graoo' is read by no pipeline, so its values "
                                "would be ignored (did you mean 'grao'?)"),
    # issue 31, case 2: a misspelt component at weight 0 was ignored, relevance kept weight 1
    ({"rewards": {"components": {"relevence": {"weight": 0}}}},
     "rewards.components.relevence: no reward of that name (did you mean 'relevance'?)"),
])
def test_a_misspelt_section_or_reward_name_is_refused_before_any_node(project, params, message):  # noqa: F811
    kedro_run(project, ["data_processing"])
    before = sorted(p.relative_to(project) for p in (project / "data").rglob("*"))
    with pytest.raises(Exception, match=re.escape(message)):
        kedro_run(project, ["data_processing", "sft", "grao"], {**TINY_RUN, **params})
    assert sorted(p.relative_to(project) for p in (project / "data").rglob("*")) == before


@pytest.mark.slow
def test_nan_rewards_in_evaluation_fail_naming_the_reward_and_write_no_metrics(project):  # noqa: F811
    params = {**TINY_RUN, "rewards": {"components": {"tests.helpers:half_nan_reward": {"weight": 1.0}}}}
    kedro_run(project, ["data_processing", "sft", "grao"])
    with pytest.raises(Exception, match="reward 'tests.helpers:half_nan_reward' returned nan"):
        kedro_run(project, ["evaluation"], params)
    assert not (project / "data/08_reporting/evaluation_metrics.json").exists()


@pytest.mark.slow
def test_a_swapped_base_model_is_not_resumed_from_the_old_checkpoints(project, caplog):  # noqa: F811
    kedro_run(project, ["data_processing", "sft"])
    first = HFModelDataset(path=str(project / "data/06_models/sft")).load().model.state_dict()
    HFModelDataset(path=str(project / "tiny_base")).save(tiny_model(gpt2_tokenizer(), seed=7))
    with caplog.at_level("WARNING"):
        kedro_run(project, ["data_processing", "sft"])
    assert "the starting weights differ" in caplog.text
    second = HFModelDataset(path=str(project / "data/06_models/sft")).load().model.state_dict()
    assert not all(torch.equal(first[k], second[k]) for k in first)
    aside = list((project / "data/06_models/checkpoints/sft").glob("previous-*"))
    assert len(aside) == 1 and (aside[0] / "step-000002").is_dir()


def test_load_dataset_gets_hub_ids_and_builder_names_unchanged(project, monkeypatch):  # noqa: F811
    """Kedro makes every `path:` absolute; `source:` reaches load_dataset / from_pretrained as written."""
    seen = {}
    def load_dataset(src, **kw):
        seen["data"] = (src, kw)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    import grao_pipeline.io.datasets as io_datasets
    monkeypatch.setattr(io_datasets, "load_model", lambda src, **kw: seen.setdefault("model", (src, kw)))
    (project / "conf/local/catalog.yml").write_text(yaml.safe_dump({
        "raw_rows": {"type": "grao_pipeline.io.HFLoadDataset", "source": "Anthropic/hh-rlhf",
                     "load_args": {"data_dir": "helpful-base", "split": "train"}},
        "base_model_source": {"type": "grao_pipeline.io.HFModelDataset",
                              "source": "HuggingFaceTB/SmolLM2-360M-Instruct"}}))
    from kedro.framework.session import KedroSession
    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        catalog.load("raw_rows")
        catalog.load("base_model_source")
    assert seen["data"] == ("Anthropic/hh-rlhf", {"data_dir": "helpful-base", "split": "train"})
    assert seen["model"][0] == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert json.dumps(seen["model"][1]) == json.dumps({"trust_remote_code": False})
    shutil.rmtree(project / "conf/local")
