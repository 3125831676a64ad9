"""One ``kedro run`` per data directory: a second refuses naming the holder; a dead
holder's lock is taken over; Optuna workers share it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from grao_pipeline.hooks import RunLock, RunLockError
from tests.pipelines.conftest import ROOT, kedro_run, project  # noqa: F401  (fixture)


def hold_lock(project_path, pipelines):
    """A process that takes the lock as a run of ``pipelines`` would, then sleeps."""
    script = (f"from grao_pipeline.hooks import RunLock\nlock = RunLock()\n"
              f"lock.before_pipeline_run({{'project_path': {str(project_path)!r}, "
              f"'pipeline_names': {pipelines!r}}})\n"
              "print('held', flush=True)\nimport time; time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    while (line := holder.stdout.readline()) and line.strip() != "held":
        pass  # Kedro's start-up logging
    assert line.strip() == "held"
    return holder


def lock_as(project_path, pipelines):
    lock = RunLock()
    lock.before_pipeline_run({"project_path": str(project_path), "pipeline_names": pipelines})
    return lock


def test_a_second_run_is_refused_naming_the_holder_until_the_holder_dies(project):  # noqa: F811
    holder = hold_lock(project, None)
    try:
        with pytest.raises(RunLockError, match=rf"another kedro run is using .*data.*\"pid\": {holder.pid}"):
            kedro_run(project, ["data_processing"])
        assert not (project / "data/05_model_input/train").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    kedro_run(project, ["data_processing"])  # the dead holder's lock is taken over
    assert (project / "data/05_model_input/train").exists()


def test_tuning_workers_share_the_lock_and_exclude_training(tmp_path):
    holder = hold_lock(tmp_path, ["tuning"])
    try:
        worker = lock_as(tmp_path, ["tuning"])  # a second Optuna worker may join
        with pytest.raises(RunLockError, match="another kedro run"):
            lock_as(tmp_path, ["grao"])
        worker.after_pipeline_run()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    lock_as(tmp_path, ["grao"]).after_pipeline_run()
