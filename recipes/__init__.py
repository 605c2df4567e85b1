# The recipes (Hydra configs of the `recipe` group) and the scripts that measure them. A package only so
# that those scripts, run as files (python recipes/<task>/other_tasks.py), share other_tasks_common.py.
