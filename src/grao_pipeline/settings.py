"""Project settings."""

# kedro-viz writes .viz/ on every run through its hooks; the project does not need it.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)
