"""What a finished run produced, read back from its artifacts on disk (not from what the run said of
itself), so that the tunepipe run and the baseline can be shown to have done the same work: the
split sizes of the examples, the trials of the search and its best hyperparameters, TFMA's metrics
and blessing, the versions in the serving directory, and that version 1 loads and scores the held-out split through its
`serving_default` signature (serialized tf.Examples, TF Serving's convention).

    uv run python -m bench.whole_run.verify --examples E --tuning T --evaluation V --serving-dir S --model-name M

prints `RESULT {json}` as its last line. It runs in a process of its own, after the run, untimed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

RESULT = "RESULT "


def served_model(examples: str, version_dir: Path) -> dict:
    """Load a served version and score the held-out split with it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from components.evaluate.tfma_inputs import list_array
    from components.examples import held_out_split, split_files
    from components.schema import NUMERIC, Schema
    from components.serving import CLASSES, EXAMPLES_INPUT, SERVING_SIGNATURE

    loaded = tf.saved_model.load(str(version_dir))
    signatures = sorted(loaded.signatures.keys())
    schema = Schema.read(examples)
    split = held_out_split(examples)
    table = pa.concat_tables([pq.read_table(path) for path in split_files(examples, split)])
    arrays = [list_array(table.column(column.name).combine_chunks() if column.kind == NUMERIC
                         else table.column(column.name).combine_chunks().cast(pa.string()),
                         pa.float32() if column.kind == NUMERIC else pa.large_binary())
              for column in schema.features]
    serialized = example_coder.RecordBatchToExamples(
        pa.RecordBatch.from_arrays(arrays, [column.name for column in schema.features]))
    outputs = loaded.signatures[SERVING_SIGNATURE](**{EXAMPLES_INPUT: tf.constant(serialized)})
    facts = {"loads": True, "signatures": signatures, "scored_rows": len(serialized), "scored_split": split}
    if CLASSES in outputs:
        predicted = [value.decode() for value in outputs[CLASSES].numpy().reshape(-1)]
        truth = [str(value) for value in table.column(schema.label.name).to_pylist()]
        facts["served_accuracy"] = sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1)
    return facts


def facts(examples: str, tuning: str, evaluation: str, serving_dir: str, model_name: str) -> dict:
    from components import artifacts
    from components.evaluate.step import BLESSING, METRICS
    from components.resolve_baseline import serving_versions
    from components.tune.artifact import BEST_HYPERPARAMETERS
    from components.tune.observer import COMPLETED
    from components.tune.trials import TRIALS_RECORDS, read_records

    ingested = artifacts.read_manifest(examples, artifacts.EXAMPLES)
    trials = read_records(Path(tuning, TRIALS_RECORDS))
    metrics = json.loads(Path(evaluation, METRICS).read_text())
    blessing = json.loads(Path(evaluation, BLESSING).read_text())
    candidate = metrics["overall"]["candidate"]
    found = {"splits": ingested["counts"]["splits"], "rows_read": ingested["counts"]["rows_read"],
             "rejected": ingested["counts"]["rejected"],
             "trials": len(trials), "completed_trials": sum(trial.status == COMPLETED for trial in trials),
             "best_hyperparameters": json.loads(Path(tuning, BEST_HYPERPARAMETERS).read_text()),
             "tfma_example_count": metrics["example_count"], "tfma_split": metrics["split"],
             "accuracy": candidate.get("accuracy"), "macro_auc": candidate.get("macro_auc"),
             "blessed": blessing["blessed"], "versions": serving_versions(serving_dir, model_name)}
    first = Path(serving_dir, model_name, "1")
    try:
        found["served"] = served_model(examples, first) if first.is_dir() else {"loads": False, "error": "no version 1"}
    except Exception as error:  # a model that does not load is a finding, not a crash of the check
        found["served"] = {"loads": False, "error": f"{type(error).__name__}: {error}"[:300]}
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("examples", "tuning", "evaluation", "serving-dir", "model-name"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    found = facts(args.examples, args.tuning, args.evaluation, args.serving_dir, args.model_name)
    print(RESULT + json.dumps(found, default=str), flush=True)


if __name__ == "__main__":
    main()
