"""The pairwise judge against a real HTTP server on 127.0.0.1 (no mock) and a tiny local LM."""

import json

import pandas as pd
import pytest

from grao_pipeline.alignment.models import save_model
from grao_pipeline.alignment.rewards.judge import (
    JudgeError,
    LocalBackend,
    OpenAIBackend,
    PairwiseJudgeReward,
    parse_verdict,
)
from tests.judge_server import ScriptedJudge, Served, free_port
from tests.pipelines.conftest import TINY_RUN, kedro_run, project  # noqa: F401  (fixture)

PROMPTS = ["how are you?", "any plans?", "tea or coffee?"]
REFERENCES = ["fine.", "a good walk", "tea"]
SAMPLES = ["very good thanks", "nothing much", "tea"]  # better, worse, identical to y


@pytest.fixture
def judge():
    scripted = ScriptedJudge()
    with Served(scripted) as served:
        scripted.url = served.url
        yield scripted


def http_reward(judge, tmp_path=None, **kwargs):
    backend = OpenAIBackend(judge.url, "scripted", None, timeout=kwargs.pop("timeout", 10.0),
                            max_retries=kwargs.pop("max_retries", 2))
    return PairwiseJudgeReward(backend, cache=tmp_path and tmp_path / "cache.sqlite",
                               show_progress=False, **kwargs)


@pytest.mark.parametrize("reply, verdict", [("A", "A"), (" b.", "B"), ("Tie", "TIE"),
                                            ("**A**", "A"), ("Answer A", None), ("", None)])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_verdicts_against_the_reference_and_r_y_y_is_zero_without_a_call(judge):
    reward = http_reward(judge)
    assert reward(PROMPTS, SAMPLES, REFERENCES) == [1.0, -1.0, 0.0]
    assert judge.calls == 4  # two orders for the two samples that differ from y
    assert reward(PROMPTS, REFERENCES, REFERENCES) == [0.0, 0.0, 0.0] and judge.calls == 4


def test_a_verdict_that_does_not_survive_the_swap_is_a_tie(judge):
    judge.mode = "always_first"
    reward = http_reward(judge)
    assert reward(PROMPTS, SAMPLES, REFERENCES) == [0.0, 0.0, 0.0]
    assert reward.stats["disagreements"] == 2


def test_429_and_500_are_retried(judge):
    judge.failures = [429, 500]
    assert http_reward(judge, max_retries=2)(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1]) == [1.0]
    assert judge.calls == 4  # two failures, then the two orders


def test_a_timeout_names_the_endpoint(judge):
    judge.delay = 2.0
    with pytest.raises(JudgeError, match=f"judge endpoint {judge.url} failed after retries: APITimeoutError"):
        http_reward(judge, timeout=0.3, max_retries=0)(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])


def test_an_unreachable_endpoint_is_named():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(url, "m", None, timeout=2.0, max_retries=0)
    with pytest.raises(JudgeError, match=f"judge endpoint {url} failed after retries: APIConnectionError"):
        PairwiseJudgeReward(backend, show_progress=False)(PROMPTS[:1], SAMPLES[:1], REFERENCES[:1])


def test_the_cache_answers_a_rerun_without_calls(judge, tmp_path):
    assert http_reward(judge, tmp_path)(PROMPTS, SAMPLES, REFERENCES) == [1.0, -1.0, 0.0]
    calls = judge.calls
    again = http_reward(judge, tmp_path)  # a new process would see the same file
    assert again(PROMPTS, SAMPLES, REFERENCES) == [1.0, -1.0, 0.0]
    assert judge.calls == calls and again.stats["cache_hits"] == 4


def test_garbage_replies_are_counted_and_fail_past_the_rate(judge):
    judge.mode = "garbage"
    tolerant = http_reward(judge, max_unparseable_rate=1.0)
    assert tolerant(PROMPTS, SAMPLES, REFERENCES) == [0.0, 0.0, 0.0]
    assert tolerant.stats["unparseable"] == 4
    with pytest.raises(JudgeError, match=f"judge {judge.url}: 4 of 4 replies were not a verdict"):
        http_reward(judge, max_unparseable_rate=0.5)(PROMPTS, SAMPLES, REFERENCES)


@pytest.mark.parametrize("mode", ["bad_json", "no_choices", "empty_choices", "text_plain",
                                  "null_content"])
def test_a_200_reply_that_is_not_a_chat_completion_is_unparseable_and_named(judge, mode, caplog):
    """Issue 31, case 10: each once raised a raw library exception naming no endpoint."""
    judge.mode = mode
    tolerant = http_reward(judge, max_unparseable_rate=1.0)
    assert tolerant(PROMPTS, SAMPLES, REFERENCES) == [0.0, 0.0, 0.0]
    assert tolerant.stats["unparseable"] == 4
    assert f"judge {judge.url}: malformed reply" in caplog.text
    with pytest.raises(JudgeError, match=f"judge {judge.url}: 4 of 4 replies were not a verdict"):
        http_reward(judge, max_unparseable_rate=0.5)(PROMPTS, SAMPLES, REFERENCES)


def test_the_local_judge_is_deterministic(tiny, tmp_path):
    save_model(tiny, tmp_path / "judge")
    backend = LocalBackend(str(tmp_path / "judge"))
    first = PairwiseJudgeReward(backend, show_progress=False)(PROMPTS, SAMPLES, REFERENCES)
    second = PairwiseJudgeReward(backend, show_progress=False)(PROMPTS, SAMPLES, REFERENCES)
    assert first == second and set(first) <= {-1.0, 0.0, 1.0} and first[2] == 0.0


@pytest.mark.slow
def test_kedro_trains_and_evaluates_grao_with_the_judge(project, tmp_path):  # noqa: F811
    judge_params = {"components": {"reward_model": {"weight": 0}, "relevance": {"weight": 0},
                                   "positivity": {"weight": 0},
                                   "profanity": {"weight": 0},
                                   "judge": {"weight": 1.0, "backend": "local",
                                             "model": str(project / "tiny_base"),
                                             "cache": str(tmp_path / "verdicts.sqlite")}}}
    kedro_run(project, ["data_processing", "sft", "grao", "evaluation"],
              {**TINY_RUN, "rewards": judge_params})
    log = pd.read_csv(project / "data/08_reporting/grao_training_log.csv")
    assert set(log["reward/mean"]) <= {-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0}
    assert (log["reward/reference"] == 0.0).all()  # R(y, y) = 0
    metrics = json.loads((project / "data/08_reporting/evaluation_metrics.json").read_text())
    ras = metrics["grao"]["ras"]
    assert ras["ci_low"] <= ras["value"] <= ras["ci_high"]
    completions = pd.read_json(project / "data/07_model_output/evaluation_completions.jsonl", lines=True)
    assert set(completions["reward"]) <= {-1.0, 0.0, 1.0}
    assert (completions["verdict_vs_reference"] == completions["reward"]).all()


class BiasedMargins:
    """A backend whose margin log p(A) − log p(B) is +3 of position bias plus ±1 for the
    answer containing "good"."""

    identity = endpoint = "biased"

    def margin(self, text):
        first, second = text.split("Answer A: ")[1].split("\n\nAnswer B: ")
        return 3.0 + ("good" in first) - ("good" in second.split("\n\n")[0])


def test_margin_combination_cancels_a_constant_position_bias():
    reward = PairwiseJudgeReward(BiasedMargins(), combine="margin", margin_tie=0.5, show_progress=False)
    # o "very good thanks" vs y "fine.": m(o first) = 4, m(y first) = 2 -> +1
    assert reward(PROMPTS, SAMPLES, REFERENCES) == [1.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="needs the local backend"):
        PairwiseJudgeReward(OpenAIBackend("http://127.0.0.1:9/v1", "m", None, 1.0, 0), combine="margin")


def test_the_local_judge_margin_mode_is_deterministic(tiny, tmp_path):
    save_model(tiny, tmp_path / "judge")
    backend = LocalBackend(str(tmp_path / "judge"))
    runs = [PairwiseJudgeReward(backend, combine="margin", margin_tie=0.0, show_progress=False)(
        PROMPTS, SAMPLES, REFERENCES) for _ in range(2)]
    assert runs[0] == runs[1] and set(runs[0]) <= {-1.0, 0.0, 1.0} and runs[0][2] == 0.0
