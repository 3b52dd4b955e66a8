"""The mlflow tags negbench writes on a run, in one place: the harness writes them and the reports
and tools read them by these names. Imports nothing, so the report's modules and ``--help`` can
read it without torch. (A run's identity tags, ``suite``, ``strategy``, ``seed`` and ``budget``,
are plain words and stay where the tracker writes them.)"""

# how the run came to be
COMMAND_TAG = "negbench.command"  # the command line, with passwords masked
CELL_TAG = "negbench.cell"  # the ablation cell (hash of the resolved config) a run is for
SPEC_TAG = "negbench.spec"  # the spec file an ablation's run came from
TUNED_TAG = "negbench.tuned"  # the tuned file a run's strategy settings came from
TUNED_VAL_TAG = "negbench.tuned_val"  # that tuning's validation kNN: "DEFAULT BEST TRIALS"
TUNED_SAME_TAG = "negbench.tuned_same"  # "1": its tuned values are the defaults (one run, both)
SWEEP_TAG = "negbench.sweep"  # a spec's sweep point ("suite.classes=5"): a section of its own
TRIAL_TAG = "negbench.trial"  # the optuna trial a tuning run is for
WORKER_TAG = "negbench.worker"  # the worker (host and pid) that ran an ablation's cell
PROCESS_TAG = "negbench.process"  # the run's process token (pool.process_token)
ROLE_TAG = "negbench.role"  # a tuning run's role: trial, or the default it is compared with
DEFAULT_TAG = "negbench.default"  # a tuning run of the registry's default settings

# what the run did
DATA_TAG = "negbench.data"  # "NAME@HASH": the user's files it read (Suite.data_identity)
LABELS_TAG = "negbench.labels"  # "none": its suite has no labels
FILTER_TAG = "negbench.fn_filter"  # its false-negative filter: the variant "STRATEGY x FILTER"
ORACLE_TAG = "negbench.oracle"  # "1": it read the oracle labels (a bound, never ranked)
FLOOR_KEY_TAG = "negbench.floor_key"  # what its untrained-encoder floors depend on, hashed
FLOOR_FROM_TAG = "negbench.floor_from"  # the run whose floors it reused

# what came of it
HEALTH_TAG = "negbench.health"  # ok, degraded or collapsed
HEALTH_REASON_TAG = "negbench.health_reason"  # why, in words
