"""The one-script baseline of bench/whole_run: the work of `tunepipe run --config FILE` done in one
Python process, by the project's own components called in order, as `pipeline.hooks` calls them:

    components.source.resolve -> components.ingest.step.run -> components.preprocess.step.run ->
    components.tune.step.run -> components.train.step.run -> components.resolve_baseline.run ->
    components.evaluate.step.run -> components.push.run (when blessed)

with the same config sections (the file's `data`, `beam`, `preprocess`, `tuner`, `training` and
`evaluation`), so the same split, the same analyzers, the same Hyperband budget, the same training
and export, TFMA on Beam's DirectRunner and the copy to `<serving_dir>/<model_name>/<version>/`.
What it leaves out is what the pipeline adds around the components: kfp.local (a subprocess per
step, the executor and its artifact files, the cache), MLflow (the runs, each trial and epoch, the
model artifact copied into the store, the registry) and the CLI's pre-check of the source.

    uv run python -m bench.whole_run.baseline --config data/penguins/pipeline.yaml --output-root /tmp/b

Each step prints one line when it is done; the last line on stdout is `RESULT {json}`: the time of
each phase (the interpreter's start-up, the imports, each step) and what the steps reported.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

RESULT = "RESULT "
# The steps in the order the baseline runs them: the registry's order (pipeline.steps).
STEPS = ("resolve-source", "ingest", "preprocess", "tune", "train", "resolve-baseline", "evaluate", "push")


def layout(output_root: str | Path) -> dict[str, Path]:
    """Where the baseline writes each artifact under its output root (the serving directory is the
    config's, `<output_root>/serving` by default)."""
    root = Path(output_root)
    return {"examples": root / "artifacts" / "ingest" / "examples",
            "transform": root / "artifacts" / "preprocess" / "transform",
            "tuning": root / "artifacts" / "tune" / "tuning",
            "tune_work": root / "work" / "tune",
            "model": root / "artifacts" / "train" / "model",
            "baseline": root / "artifacts" / "resolve-baseline" / "baseline",
            "evaluation": root / "artifacts" / "evaluate" / "evaluation",
            "pushed": root / "artifacts" / "push" / "pushed"}


def process_age() -> float:
    """Seconds since this process started (Linux /proc), measured as `pipeline.launcher.process_age`
    measures a step's start-up. (Copied, not imported: the baseline imports nothing of the orchestration.)"""
    try:
        started_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


def quiet_libraries() -> None:
    """The logging every step of `tunepipe run` sets up (`pipeline.launcher.quiet_libraries`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py", "matplotlib", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    phases[name] = time.monotonic() - began
    print(f"baseline: {name} done in {phases[name]:.1f} s", flush=True)


def run(config_file: str, output_root: str) -> dict:
    """The whole pipeline's work for `config_file`, its outputs under `output_root`."""
    phases = {"start-up": process_age()}
    with timed(phases, "imports"):
        from components import push, resolve_baseline, source
        from components.evaluate import report
        from components.evaluate import step as evaluate
        from components.evaluate.step import BLESSING
        from components.ingest import step as ingest
        from components.model.hypermodel import HypermodelSource
        from components.preprocess import step as preprocess
        from components.transform import Transform
        from components.train import step as train
        from components.tune import step as tune
        from pipeline import config as pipeline_config

    cfg = pipeline_config.load(config_file, {"output_root": str(Path(output_root).resolve())})
    paths = layout(cfg.output_root)
    serving_dir, model_name = str(Path(cfg.resolved_serving_dir).resolve()), cfg.resolved_model_name
    hypermodel = HypermodelSource.read(cfg.tuner.hypermodel) if cfg.tuner.hypermodel else None
    facts: dict = {}

    with timed(phases, "resolve-source"):
        resolved = source.resolve(cfg.data.source, cfg.data.span_window)
    with timed(phases, "ingest"):
        ingested = ingest.run(cfg.data, cfg.beam, paths["examples"], spans=list(resolved.spans) or None)
    facts.update(files=len(resolved.files), splits=ingested.counts["splits"], rows_read=ingested.counts["rows_read"],
                 rejected=ingested.counts["rejected"], problem=ingested.problem.type)
    with timed(phases, "preprocess"):
        transformed = preprocess.run(paths["examples"], paths["transform"], cfg.preprocess, cfg.beam)
    facts.update(features=len(transformed.transform.features), classes=len(transformed.transform.label_vocabulary))
    with timed(phases, "tune"):
        tuner = cfg.tuner.for_problem(Transform.read(paths["transform"]).kind)
        tuned = tune.run(paths["examples"], paths["transform"], paths["tuning"], tuner, None,
                         work_dir=paths["tune_work"], hypermodel_source=hypermodel)
    facts.update(trials=len(tuned.trials), best_score=tuned.best_score, objective=tuned.objective)
    with timed(phases, "train"):
        trained = train.run(paths["examples"], paths["transform"], paths["model"], cfg.training,
                            hyperparameters=paths["tuning"], warm_start=None, search_space=cfg.tuner.search_space,
                            hypermodel_source=hypermodel)
    facts.update(epochs_trained=trained.epochs_trained, train_metrics=trained.metrics)
    with timed(phases, "resolve-baseline"):
        found = resolve_baseline.run(serving_dir, model_name, paths["baseline"])
    with timed(phases, "evaluate"):
        evaluated = evaluate.run(paths["examples"], paths["model"], paths["evaluation"], cfg.evaluation, cfg.beam,
                                 baseline=found.path if found else None)
        for line in report.summary_lines(evaluated):
            print(f"evaluate: {line}", flush=True)
    facts.update(blessed=evaluated.blessed, example_count=evaluated.example_count,
                 eval_metrics={name: value for name, value in evaluated.metrics.items()
                               if isinstance(value, (int, float))})
    if evaluated.blessed:  # the pipeline's push task runs only when blessed (no --force-push here)
        with timed(phases, "push"):
            verdict = json.loads(Path(paths["evaluation"], BLESSING).read_text())
            pushed = push.run(paths["model"], verdict, serving_dir, model_name)
            paths["pushed"].mkdir(parents=True, exist_ok=True)
            push.write_result(pushed, paths["pushed"] / "push.json")
        facts.update(pushed=pushed.pushed, push_version=pushed.version, push_path=pushed.path)
    # What "no kfp, no MLflow" means, checked: neither was imported by anything the steps ran.
    facts["imported"] = {name: name in sys.modules for name in ("kfp", "mlflow")}
    return {"phases": phases, "facts": facts, "serving_dir": serving_dir, "model_name": model_name,
            "paths": {name: str(path) for name, path in paths.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the pipeline YAML file `tunepipe run` is given")
    parser.add_argument("--output-root", required=True, help="where the artifacts and the serving directory go")
    args = parser.parse_args(argv)
    quiet_libraries()
    result = run(args.config, args.output_root)
    print(RESULT + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
