"""Every name tunepipe writes into the tracking store and reads back, defined once (as MLflow keeps
its own in `mlflow/utils/mlflow_tags.py`).

The launcher, the trial recorder and the model registry write these; `tunepipe runs / trials /
lineage` and retraining's look-up of the last search read them. Renaming one here renames it on
both sides; the query tests write their fixture store through these names, so a tag that only one
side knows fails a test.

Runs:
- a pipeline run: KIND = PIPELINE; a step run: STEP (its name), CACHED ("true" for a record of a
  step kfp's cache answered), its artifacts as INPUT/OUTPUT `<prefix>.<artifact>.uri|digest`;
- a trial run (nested under the tune step's run): SEARCH_ID, TRIAL_ID, TRIAL_STATUS, OBJECTIVE.

Registered model versions carry VERSION_SERVING, VERSION_FORCED and VERSION_DIGEST; the model in
production is the version behind PRODUCTION_ALIAS.
"""
from __future__ import annotations

from components.errors import TunepipeError

# MLflow's own tag for a nested run's parent.
PARENT_RUN = "mlflow.parentRunId"

# Every run tag of tunepipe's own starts with this; lineage shows a step run's tags without it.
PREFIX = "tunepipe."

KIND = "tunepipe.kind"
PIPELINE = "pipeline"  # the value of KIND on a pipeline run
STEP = "tunepipe.step"
CACHED = "tunepipe.cached"
ERROR = "tunepipe.error"
INPUT = "tunepipe.input"
OUTPUT = "tunepipe.output"
# A pipeline run: where it ran (the output root, the host), and how many runs of killed runs it
# found RUNNING and marked KILLED when it started.
OUTPUT_ROOT = "tunepipe.output_root"
HOST = "tunepipe.host"
CLOSED_ABANDONED = "tunepipe.closed_abandoned"

# resolve-source
SPANS = "tunepipe.spans"  # the data spans a run read, comma-separated, oldest first
FINGERPRINT = "tunepipe.fingerprint"
FILES = "tunepipe.files"

# ingest: the problem the label poses (components.problem) and why
PROBLEM_TYPE = "tunepipe.problem_type"
PROBLEM_REASON = "tunepipe.problem_type.why"

# preprocess: feature columns left out, empty on every train row (comma-separated)
LEFT_OUT = "tunepipe.left_out"

# tune: the step's own run
TUNING = "tunepipe.tuning"
SEARCHED, REUSED, OFF = "searched", "reused", "off"  # the values of TUNING
TUNING_WHY = "tunepipe.tuning.why"  # why a run that could reuse searched anyway
REUSED_FROM = "tunepipe.tuning.reused_from"  # the tune run whose search was reused
SEARCH_SPACE = "tunepipe.search_space"
BEST_HYPERPARAMETERS = "tunepipe.best_hyperparameters"
BEST_TRIAL = "tunepipe.best_trial_id"

# tune: a worker of a parallel search (its step run and each of its trial runs)
WORKER = "tunepipe.worker"

# tune: each trial's run
SEARCH_ID = "tunepipe.search_id"
TRIAL_ID = "tunepipe.trial_id"
TRIAL_STATUS = "tunepipe.trial_status"
OBJECTIVE = "tunepipe.objective"
# Trial params that describe the trial (Hyperband's bookkeeping), not the model.
TRIAL_FACTS = ("trial_id", "bracket", "round", "initial_epoch", "max_epoch", "continued_from")

# tune and train: the user's hypermodel module (`path:function`) and its content digest
HYPERMODEL = "tunepipe.hypermodel"
HYPERMODEL_DIGEST = "tunepipe.hypermodel.digest"

# train
WARM_START = "tunepipe.warm_start"

# resolve-baseline
BASELINE_PATH = "tunepipe.baseline.path"
BASELINE_SOURCE = "tunepipe.baseline.source"

# evaluate
BLESSED = "tunepipe.blessed"
# The served version the candidate already is (an unchanged rerun): evaluate and push not repeated.
UNCHANGED = "tunepipe.evaluation.unchanged"

# push
PUSHED = "tunepipe.push.pushed"
PUSH_REASON = "tunepipe.push.reason"
PUSH_VERSION = "tunepipe.push.version"
PUSH_FORCED = "tunepipe.push.forced"

# The model registry
PRODUCTION_ALIAS = "production"
VERSION_SERVING = "serving_version"
VERSION_FORCED = "forced"
VERSION_DIGEST = "digest"
VERSION_PATH = "serving_path"  # the version's directory in the serving directory
VERSION_RECOVERED = "recovered"  # registered by a later run: its push was killed before it could

# MLflow keeps a tag value up to this many characters.
TAG_LIMIT = 5000


def output(name: str, field: str) -> str:
    """The tag holding an output artifact's `uri` or `digest`."""
    return f"{OUTPUT}.{name}.{field}"


def input(name: str, field: str) -> str:  # noqa: A001 (the tag's own word)
    """The tag holding an input artifact's `uri` or `digest`."""
    return f"{INPUT}.{name}.{field}"


def flag(value: bool) -> str:
    """A boolean as these tags hold it."""
    return "true" if value else "false"


def quoted(value: str) -> str:
    """A value (of a tag, a param, a run's or a model's name) in an MLflow filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TunepipeError(f"cannot look up {value!r}: it holds both kinds of quotes")
