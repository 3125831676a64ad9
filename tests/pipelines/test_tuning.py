"""Optuna studies on a tiny model: a 3-trial study and its tuned environment, pruning,
a SIGKILLed worker whose trial is failed and retried, and two worker processes sharing
one study on a journal file and on a real PostgreSQL server."""

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
import yaml
from kedro.framework.session import KedroSession
from optuna.trial import TrialState

from grao_pipeline.alignment import tuning
from grao_pipeline.alignment.tuning import StudyConfig, pruning_callback

from .conftest import ROOT, TINY_RUN, kedro_run

TINY_TUNING = {"n_trials": 3, "steps": 2, "eval_every": 1, "eval_prompts": 4,
               "pruner_startup_trials": 1}
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def local_params(project: Path, tuning: dict) -> None:
    """Worker processes read their parameters from conf/local, as a user's would."""
    (project / "conf/local/parameters.yml").write_text(
        yaml.safe_dump({**TINY_RUN, "tuning": {**TINY_TUNING, **tuning}}))


def worker(project: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines", "tuning"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_a_misspelt_search_space_key_is_refused_before_the_first_trial(project):
    kedro_run(project, ["data_processing", "sft"])
    space = {"beta": {"low": 0.0, "high": 1.0}, "lamda": {"low": 0.0, "high": 1.5}}
    with pytest.raises(Exception, match=re.escape("search_space.lamda: 'grao' has no such setting; "
                                                  "did you mean 'lam'?")):
        kedro_run(project, ["tuning"], {**TINY_RUN, "tuning": {**TINY_TUNING, "search_space": space}})
    assert not list((project / "data").rglob("optuna*")), "a study was opened"


@pytest.mark.slow
def test_three_trial_study_writes_its_outputs_and_the_tuned_env_round_trips(project):
    kedro_run(project, ["data_processing", "sft"])
    kedro_run(project, ["tuning"], {**TINY_RUN, "tuning": TINY_TUNING})
    trials = pd.read_csv(project / "data/08_reporting/tuning/grao/trials.csv")
    assert len(trials) == 3 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    for name in ("history", "importances", "contour", "intermediate_values"):
        assert (project / f"data/08_reporting/tuning/grao/{name}.png").stat().st_size > 0
    tuned = yaml.safe_load((project / "conf/tuned/parameters_grao.yml").read_text())
    study = optuna.load_study(study_name="tuning.grao",
                              storage=f"sqlite:///{project}/data/09_tuning/optuna.db")
    assert tuned == {"grao": study.best_params}

    # resuming adds trials to the same study
    kedro_run(project, ["tuning"], {**TINY_RUN, "tuning": {**TINY_TUNING, "n_trials": 4}})
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4

    # issue 31, case 5: trials under another objective never join the study's old ones,
    # and the tuned environment is not rewritten from them
    tuned_before = (project / "conf/tuned/parameters_grao.yml").read_text()
    with pytest.raises(Exception, match=re.escape("study 'tuning.grao' holds trials run under "
                                                  "other settings (steps '2' -> '3')")):
        kedro_run(project, ["tuning"], {**TINY_RUN, "tuning": {**TINY_TUNING, "steps": 3, "n_trials": 6}})
    assert len(study.get_trials()) == 4
    assert (project / "conf/tuned/parameters_grao.yml").read_text() == tuned_before

    # the best values become a config environment that trains the final model
    (project / "conf/tuned/catalog.yml").write_text((project / "conf/local/catalog.yml").read_text())
    with KedroSession.create(project_path=project, env="tuned", runtime_params=TINY_RUN) as session:
        session.run(pipeline_names=["grao"])
    state = yaml.safe_load((project / "data/06_models/checkpoints/grao/step-000002/trainer_state.json")
                           .read_text())
    assert state["config"]["beta"] == tuned["grao"]["beta"]
    assert state["config"]["lam"] == tuned["grao"]["lam"]


def test_the_pruner_prunes_a_trial_that_reports_a_bad_value():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for value, expect_pruned in ((1.0, False), (-5.0, True)):
        trial = study.ask()
        report = pruning_callback(trial, policy=None, score=lambda policy, v=value: v, every=1,
                                  last_step=4)
        try:
            for step in (1, 2, 3):
                report(step, {})
        except optuna.TrialPruned:
            assert expect_pruned
            study.tell(trial, state=TrialState.PRUNED)
        else:
            assert not expect_pruned
            study.tell(trial, value)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[1].intermediate_values == {1: -5.0}


@pytest.mark.parametrize("race_error", [
    sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists")),
    sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {},
                                  Exception("UNIQUE constraint failed: alembic_version.version_num")),
])
def test_a_worker_that_loses_the_schema_race_connects_once_the_winner_is_done(
        tmp_path, monkeypatch, race_error):
    real_storage, calls = tuning.RDBStorage, []

    def losing_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise race_error
        return real_storage(*args, **kwargs)

    monkeypatch.setattr(tuning, "RDBStorage", losing_once)
    monkeypatch.setattr(tuning.time, "sleep", lambda seconds: None)
    storage = tuning.make_storage(StudyConfig(storage=f"sqlite:///{tmp_path}/optuna.db"))
    assert len(calls) == 2 and optuna.create_study(storage=storage).trials == []


def test_any_other_storage_error_is_raised_at_once(tmp_path, monkeypatch):
    calls = []

    def locked(*args, **kwargs):
        calls.append(args[0])
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(tuning, "RDBStorage", locked)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
        tuning.make_storage(StudyConfig(storage=f"sqlite:///{tmp_path}/optuna.db"))
    assert len(calls) == 1


def running_trials(db: Path) -> list[int]:
    """Read-only SQL: an Optuna storage opened here would race the worker to create the
    schema (CI once saw the worker lose that race and exit)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return [n for (n,) in con.execute("SELECT number FROM trials WHERE state = 'RUNNING'")]
    except sqlite3.OperationalError:  # no database, no table or a write in progress: not yet
        return []


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_retried(project):
    kedro_run(project, ["data_processing", "sft"])
    local_params(project, {"pruner": "none", "steps": 6, "heartbeat_interval": 1, "grace_period": 2})
    db = project / "data/09_tuning/optuna.db"
    storage = f"sqlite:///{db}"
    first = worker(project)
    deadline = time.time() + 300
    while not (running := running_trials(db)):
        if first.poll() is not None:
            pytest.fail(f"the worker exited ({first.returncode}) before a trial ran:\n"
                        f"{first.communicate()[0][-4000:]}")
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(1.5)  # one heartbeat recorded: a trial without any is never judged stale
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed = running[0]
    time.sleep(3)  # past the grace period: the heartbeat is stale
    finish(worker(project))
    trials = optuna.load_study(study_name="tuning.grao", storage=storage).trials
    assert trials[killed].state == TrialState.FAIL
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[killed].params


def two_workers_share_one_study(project: Path, storage: str) -> None:
    local_params(project, {"pruner": "none", "n_trials": 6, "storage": storage})
    outputs = [finish(p) for p in [worker(project), worker(project)]]
    if storage.startswith("journal:"):
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage[len("journal:"):]))
    trials = optuna.load_study(study_name="tuning.grao", storage=storage).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # none lost, none duplicated
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # each worker stops once 6 are finished; both may be mid-trial at that moment
    assert 6 <= len(trials) <= 7
    ran = [{int(n) for n in re.findall(r"Trial (\d+) finished", out)} for out in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == set(numbers)


@pytest.mark.slow
def test_two_workers_share_a_journal_file_study(project):
    kedro_run(project, ["data_processing", "sft"])
    two_workers_share_one_study(project, f"journal:{project}/data/09_tuning/journal.log")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1, owned by the postgres user;
    stopped and removed even when the test fails. (Not under pytest's tmp_path: its
    root-only parent folders are closed to the postgres user.)"""
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL binaries not found in {PG_BIN}: install them with "
                    "`apt-get install postgresql` (the tests need a real server, not a mock)")
    root = Path(tempfile.mkdtemp(prefix="grao-pg-"))
    shutil.chown(root, "postgres", "postgres")
    port = _free_port()

    def as_postgres(*args):
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                              capture_output=True, text=True)

    as_postgres(str(PG_BIN / "initdb"), "-D", f"{root}/db", "-A", "trust", "-U", "postgres")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", f"{root}/db", "-w", "-l", f"{root}/log", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        f"{root}/db", "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(project, postgres):
    kedro_run(project, ["data_processing", "sft"])
    two_workers_share_one_study(project, postgres)


def _proposals(storage, name: str, seed: int, n: int) -> list[dict]:
    """``n`` more trials of a toy objective on ``storage`` through the project's search."""
    cfg = tuning.TuningConfig(study_name=name, storage="sqlite:///unused.db", search_seed=seed)
    study = optuna.create_study(study_name=name, storage=storage, sampler=tuning.make_search(cfg),
                                load_if_exists=True, direction="maximize")
    study.optimize(lambda t: -sum(v for v in tuning.suggest(t, cfg.space("grao")).values()),
                   n_trials=n)
    return [t.params for t in study.trials]


def test_a_resumed_study_or_a_second_worker_does_not_repeat_the_first_proposals(tmp_path):
    """Issue 31, case 6: one seed per process made trial 3 repeat trial 0's (beta, lam)."""
    storage = f"sqlite:///{tmp_path / 'a.db'}"
    _proposals(storage, "s", 0, 3)
    resumed = _proposals(storage, "s", 0, 3)  # a new process on the same study
    points = [tuple(sorted(p.items())) for p in resumed]
    assert len(set(points)) == 6, points
    # one worker's study is reproducible: the same seed on a fresh storage, the same points
    assert _proposals(f"sqlite:///{tmp_path / 'b.db'}", "s", 0, 6) == resumed
    assert _proposals(f"sqlite:///{tmp_path / 'c.db'}", "s", 1, 1) != resumed[:1]


def test_the_tuning_objective_reads_only_the_validation_split(monkeypatch):
    """The studies' pipelines take the validation split and never the test split, and the
    score answers exactly the first eval_prompts validation prompts."""
    import datasets

    from grao_pipeline.alignment.config import EvalConfig, RewardConfig
    from grao_pipeline.alignment.tuning import SensitivityConfig, TuningConfig, ValidationScore
    from grao_pipeline.pipelines.tuning.nodes import _score
    from grao_pipeline.pipelines.tuning.pipeline import create_pipelines

    for name, p in create_pipelines(TuningConfig(), SensitivityConfig()).items():
        assert "validation_set" in p.inputs() and "test_set" not in p.inputs(), name

    validation = datasets.Dataset.from_list(
        [{"prompt": f"validation {i}", "reference": "y"} for i in range(6)])
    seen = []

    def answers(policy, rows, evaluation, **_):
        picked = rows.select(range(min(evaluation.num_prompts, len(rows))))
        seen.extend(picked["prompt"])
        return pd.DataFrame({"prompt": picked["prompt"], "reference": picked["reference"],
                             "completion": ["an answer"] * len(picked), "truncated": [False] * len(picked)})

    monkeypatch.setattr(tuning, "answer_prompts", answers)
    rewards = RewardConfig(components={"relevance": {"weight": 1.0}, "positivity": {"weight": 0},
                                       "profanity": {"weight": 0}, "reward_model": {"weight": 0}})
    score = _score(validation, EvalConfig(), rewards, "mean_reward", 4)
    assert isinstance(score, ValidationScore)
    score(None)
    assert seen == [f"validation {i}" for i in range(4)]


def _tiny_sections(tmp_path) -> dict:
    """Every parameters section grpo and sft_grpo read, from conf/base, cut to 2 steps."""
    from grao_pipeline.alignment.methods import parameter_sections

    sections = {}
    for method in ("grpo", "sft_grpo"):
        for section in parameter_sections(method):
            base = yaml.safe_load((ROOT / f"conf/base/parameters_{section}.yml").read_text())[section]
            sections[section] = {**base, **TINY_RUN.get(section, {}), "checkpoint_every": 0}
    sections["sft_grpo"] = {"phase_steps": [1, 1], "learning_rate": None}
    return sections


def test_each_method_gets_a_study_of_its_own_with_the_same_search(tiny, rows, tmp_path, monkeypatch):
    """Issue 34: one study per method (named <prefix>.<method>), each searching the shared
    learning rate and the method's own knobs, with the same number of trials; a recipe's
    split of steps is a list choice that Optuna stores as text and the trial decodes."""
    import datasets

    from grao_pipeline.alignment.config import EvalConfig, RewardConfig
    from grao_pipeline.alignment.tuning import TuningConfig, ValidationScore, run_tuning

    cfg = TuningConfig(
        methods=["grpo", "sft_grpo"], study_name="p", storage=f"sqlite:///{tmp_path}/o.db",
        steps=2, n_trials=2, pruner="none", eval_every=1, eval_prompts=2,
        search_space={"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
        method_search_space={"grpo": {"kl_coef": {"low": 0.0, "high": 0.1}},
                             "sft_grpo": {"phase_steps": {"choices": [[1, 1]]}}})
    rewards = RewardConfig(components={"relevance": {"weight": 1.0}, "positivity": {"weight": 0},
                                       "profanity": {"weight": 0}, "reward_model": {"weight": 0}})
    score = ValidationScore(datasets.Dataset.from_list(rows[:2]),
                            EvalConfig(num_prompts=2, max_new_tokens=4, batch_size=2), rewards,
                            "mean_reward")
    trained = []
    real_train = tuning.train_method

    def spy(method, policy, rows, sections, reward, changes=None, callbacks=()):
        trained.append((method, sections, changes))
        return real_train(method, policy, rows, sections, reward, changes=changes, callbacks=callbacks)

    monkeypatch.setattr(tuning, "train_method", spy)
    sections = _tiny_sections(tmp_path)
    studies = {m: run_tuning(cfg, m, tiny, rows, sections, score) for m in cfg.methods}
    assert {m: s.study_name for m, s in studies.items()} == {"grpo": "p.grpo", "sft_grpo": "p.sft_grpo"}
    for method, study in studies.items():
        assert len(study.trials) == 2
        assert set(study.trials[0].params) == {"learning_rate", *cfg.method_search_space[method]}
    assert studies["sft_grpo"].trials[0].params["phase_steps"] == "[1, 1]"  # Optuna's text
    recipe = [(s, c) for m, s, c in trained if m == "sft_grpo"]
    own = recipe[0][0]["sft_grpo"]
    assert own.phase_steps == [1, 1] and own.learning_rate == studies["sft_grpo"].trials[0].params["learning_rate"]
    assert "steps" not in recipe[0][1]  # a recipe spends its split, not steps per phase
    grpo = [s["grpo"] for m, s, _ in trained if m == "grpo"]
    assert [g.kl_coef for g in grpo] == [t.params["kl_coef"] for t in studies["grpo"].trials]
    # the sections the studies were given are untouched: the trial's values are its own
    assert sections["grpo"]["learning_rate"] == TINY_RUN["grpo"]["learning_rate"]


@pytest.mark.parametrize("change, says", [
    ({"methods": ["grao_no_imitation"], "search_space": {"learning_rate": {"low": 1e-5, "high": 1e-4}}},
     "'grao_no_imitation' reads 'grao''s parameters section; tune 'grao'"),
    ({"methods": ["sft_continued"]}, "'sft_continued' searches nothing"),
    ({"methods": ["grao", "grao"]}, "needs at least one method, each once"),
    ({"method_search_space": {"grao": {"lamda": {"low": 0.0, "high": 1.0}}}},
     "TuningConfig.method_search_space.grao.lamda: 'grao' has no such setting; did you mean 'lam'?"),
])
def test_a_study_that_cannot_be_what_it_claims_is_refused(change, says):
    from grao_pipeline.alignment.config import ConfigError
    from grao_pipeline.alignment.tuning import TuningConfig

    with pytest.raises(ConfigError, match=re.escape(says)):
        TuningConfig(**change)


def test_a_recipe_split_that_does_not_add_up_to_the_study_steps_is_refused(tmp_path):
    from grao_pipeline.alignment.config import ConfigError
    from grao_pipeline.alignment.search import check_recipe_steps

    sections = _tiny_sections(tmp_path)
    check_recipe_steps("sft_grpo", sections, {}, 2)
    with pytest.raises(ConfigError, match=re.escape("phase_steps [[1, 2]] do not add up to the "
                                                    "study's steps = 2")):
        check_recipe_steps("sft_grpo", sections, {"phase_steps": {"choices": [[1, 1], [1, 2]]}}, 2)


def test_compare_runs_each_method_with_its_tuned_values(tmp_path):
    """``compare.tuned``: every run (an ablation through its parent) reads the study's
    best values over its section, and the budget check sees the tuned split."""
    from grao_pipeline.alignment.compare import CompareConfig
    from grao_pipeline.alignment.config import ConfigError
    from grao_pipeline.alignment.search import tuned_sections
    from grao_pipeline.pipelines.compare.pipeline import create_pipeline

    methods = ["grao", "grao_no_imitation", "sft_grpo"]
    tuned = create_pipeline(CompareConfig(methods=methods, seeds=[0], tuned=True))
    untuned = create_pipeline(CompareConfig(methods=methods, seeds=[0]))
    assert {"tuned_grao", "tuned_sft_grpo"} <= tuned.inputs()
    assert not any(i.startswith("tuned_") for i in untuned.inputs())
    for method, entry in (("grao", "tuned_grao"), ("grao_no_imitation", "tuned_grao"),
                          ("sft_grpo", "tuned_sft_grpo")):
        (run,) = tuned.only_nodes_with_namespaces([f"compare.{method}.seed_0"]).nodes
        assert entry in run.inputs
    (check,) = [n for n in tuned.nodes if n.name == "check_budgets"]
    assert {"tuned_grao", "tuned_sft_grpo"} <= set(check.inputs)

    sections = _tiny_sections(tmp_path)
    sections["grao"] = yaml.safe_load((ROOT / "conf/base/parameters_grao.yml").read_text())["grao"]
    set_ = tuned_sections("grao_no_imitation", sections, {"grao": {"learning_rate": 3e-4, "lam": 0.2}})
    assert (set_["grao"].learning_rate, set_["grao"].lam) == (3e-4, 0.2)
    assert set_["grpo"] is sections["grpo"]
    with pytest.raises(ConfigError, match=re.escape("tuned settings for 'grao' set sections ['grpo']")):
        tuned_sections("grao", sections, {"grpo": {"kl_coef": 0.1}})

    # the budget check sees the tuned split of the recipe's steps, not the section's
    base = {i: yaml.safe_load((ROOT / f"conf/base/parameters_{i[len('params:'):]}.yml").read_text())
            [i[len("params:"):]] for i in check.inputs if i.startswith("params:")}
    given = [base[i] for i in check.inputs if i.startswith("params:")]
    steps = base["params:grao"]["steps"]
    check.func(*given, {}, {"sft_grpo": {"phase_steps": [steps - 1, 1]}})
    with pytest.raises(ValueError, match=re.escape("Set sft_grpo.phase_steps summing to")):
        check.func(*given, {}, {"sft_grpo": {"phase_steps": [1, 1]}})
