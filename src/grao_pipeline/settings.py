"""Project settings."""

import os

from grao_pipeline.alignment.rewards.verifiable import variant_setting
from grao_pipeline.hooks import ActiveParameters, CheckedNames, MainProcessSaves, NodeTimes, RunLock
from grao_pipeline.pipelines.compare.fingerprint import StaleRuns

# Telemetry stays off unless the user opts in: README commands run outside `make` too.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

HOOKS = (ActiveParameters(), CheckedNames(), MainProcessSaves(), RunLock(), StaleRuns(), NodeTimes())

# kedro-viz writes .viz/ on every run through its hooks; the project does not need it.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)

# An environment (conf/local, conf/cpu_compare) overrides single fields, e.g.
# `evaluation: {num_prompts: 48}`, instead of replacing whole sections.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
    # ${verifiable:<field>,<variant>[,<rate>]}: what a task variant of the verifiable env
    # sets (its data folder, its reward's format bonus), from one table in the code.
    "custom_resolvers": {"verifiable": variant_setting},
}
