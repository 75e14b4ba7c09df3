"""Benchmark: `tunepipe runs`, `tunepipe trials` and `tunepipe lineage`, each a fresh process, on a
tracking store of 50 pipeline runs; the code of a git revision (HEAD by default) against the
working tree, side by side in the same run.

The store (`bench/queries/build.py`, kept in `--out` and reused) is written through the pipeline's
own tracking code: pipeline runs, every step's run with its inputs and outputs, records of cached
steps, ten Hyperband trial runs per search, the model registry. The old code is `git archive REF
pipeline components`, unpacked beside it; both run as `python -m pipeline ...` (what the `tunepipe`
script runs) with the locked environment's interpreter, the tree under test first on `sys.path`.

Each command is timed from the outside, interpreter start-up to exit (wall time, and the CPU time of
the child), `--reps` times per tree, old and new alternating, and each answer is compared byte for
byte with the old code's. Two conditions:

- `as installed`: the environment as inherited. Here that is `PYTHONDONTWRITEBYTECODE=1` and a
  virtualenv installed without bytecode, so every process compiles every module it imports;
- `bytecode`: the same with a bytecode cache (`PYTHONPYCACHEPREFIX` in `--out`, filled by one
  untimed run first), as in the project's image (`UV_COMPILE_BYTECODE=1`) or any environment
  that may write `__pycache__`.

Also measured, per condition: the interpreter alone, `import mlflow`, and the least any command
reading the store through `MlflowClient` in a fresh process can cost (import MLflow, open the
store, one search); and, in-process, the MLflow client calls each query makes (`probe.py`).

    uv run python -m bench.queries.run                  # 5 reps, both conditions; rewrites RESULTS.md
    uv run python -m bench.queries.run --reps 1 --no-write --conditions bytecode    # a smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

GOAL_S = 2.0
CONDITIONS = ("as installed", "bytecode")
NOTES_MARKER = "<!-- notes: everything below this line is kept when run.py rewrites the file -->"
QUERY_FILES = ("pipeline/queries", "pipeline/cli_lineage.py", "pipeline/cli.py")


def _store(out: Path, runs: int, rebuild: bool) -> dict:
    from bench.queries import build

    path = out / f"store-{runs}"
    if rebuild and path.exists():
        shutil.rmtree(path)
    if not (path / "built.json").exists():
        if path.exists():
            shutil.rmtree(path)  # a build cut short
        print(f"building a store of {runs} pipeline runs in {path} (a few minutes)...", file=sys.stderr)
        build.build(path, runs)
    return json.loads((path / "built.json").read_text())


def _old_tree(out: Path, ref: str) -> tuple[Path, str]:
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    tree = out / f"old-{commit}"
    if not (tree / "pipeline" / "cli.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "pipeline", "components"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, commit


def _environment(condition: str, out: Path) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    if condition == "bytecode":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(out / "pycache")
    return env


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, bytes]:
    """Wall and CPU seconds of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} (in {cwd}) failed:\n{done.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _tree_env(env: dict[str, str], tree: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": str(tree)}


def _summary(samples: list[tuple[float, float]]) -> dict:
    walls, cpus = [wall for wall, _ in samples], [cpu for _, cpu in samples]
    return {"wall": statistics.median(walls), "wall_min": min(walls), "wall_max": max(walls),
            "cpu": statistics.median(cpus), "n": len(samples)}


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    from importlib.metadata import version

    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": memory / 1024 / 1024,
            "platform": platform.platform(), "python": platform.python_version(),
            "mlflow": version("mlflow"), "sqlalchemy": version("sqlalchemy"), "alembic": version("alembic")}


def _site_packages_compiled() -> bool:
    import mlflow

    return any((Path(mlflow.__file__).parent / "__pycache__").glob("*.pyc"))


def measure(arguments: argparse.Namespace) -> dict:
    out = arguments.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    built = _store(out, arguments.runs, arguments.rebuild)
    uri = built["uri"]
    old_tree, commit = _old_tree(out, arguments.old)
    trees = {"old": old_tree, "new": ROOT}
    python = sys.executable
    commands = {
        "runs": ["runs"],
        "trials": ["trials", built["pipeline_run_names"][0]],
        "lineage": ["lineage", "penguins@production"],
    }
    floors = {
        "interpreter (`python -c pass`)": "pass",
        "`import mlflow`": "import mlflow",
        "MLflow's floor: import, open the store, one search (collector as the commands set it)": (
            "import gc; gc.disable(); import mlflow; "
            f"mlflow.MlflowClient({uri!r}).search_experiments(); gc.freeze()"),
    }
    results: dict = {"commit": commit, "built": {key: built[key] for key in ("runs", "records", "uri")},
                     "versions": len(built["pushed_versions"]), "machine": _machine(),
                     "env": {key: os.environ.get(key) for key in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")},
                     "compiled": _site_packages_compiled(), "commands": {name: ["tunepipe", *argv, "--tracking-uri",
                                                                              uri] for name, argv in commands.items()},
                     "load_before": os.getloadavg(), "started": dt.datetime.now(dt.timezone.utc), "conditions": {}}
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *QUERY_FILES], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    results["dirty"] = dirty
    for condition in arguments.conditions:
        env = _environment(condition, out)
        if condition == "bytecode":  # fill the cache, untimed
            for tree in trees.values():
                for argv in commands.values():
                    _timed([python, "-m", "pipeline", *argv, "--tracking-uri", uri], _tree_env(env, tree), tree)
            for code in floors.values():
                _timed([python, "-c", code], env, ROOT)
        samples = {name: {"old": [], "new": []} for name in commands}
        answers = {name: {"old": set(), "new": set()} for name in commands}
        floor_samples = {label: [] for label in floors}
        for rep in range(arguments.reps):
            print(f"{condition}: repetition {rep + 1} of {arguments.reps}", file=sys.stderr)
            for name, argv in commands.items():
                for side in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                    wall, cpu, stdout = _timed([python, "-m", "pipeline", *argv, "--tracking-uri", uri],
                                               _tree_env(env, trees[side]), trees[side])
                    samples[name][side].append((wall, cpu))
                    answers[name][side].add(stdout)
            for label, code in floors.items():
                wall, cpu, _ = _timed([python, "-c", code], env, ROOT)
                floor_samples[label].append((wall, cpu))
        results["conditions"][condition] = {
            "commands": {name: {side: _summary(samples[name][side]) for side in ("old", "new")}
                         | {"same_output": len(answers[name]["old"] | answers[name]["new"]) == 1,
                            "lines": next(iter(answers[name]["new"])).count(b"\n")}
                         for name in commands},
            "floors": {label: _summary(values) for label, values in floor_samples.items()}}
    probe_env = _environment("bytecode", out)
    results["probes"] = {}
    for name, argv in commands.items():
        argument = argv[1] if len(argv) > 1 else "-"
        for side, tree in trees.items():
            runs = []
            for _ in range(3):
                extra = ["--freeze"] if side == "new" else []
                done = subprocess.run([python, str(HERE / "probe.py"), name, argument, uri, *extra],
                                      env=_tree_env(probe_env, tree), cwd=tree, capture_output=True, text=True,
                                      check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            median = sorted(runs, key=lambda run: run["seconds"])[1]
            results["probes"].setdefault(name, {})[side] = median
    results["load_after"] = os.getloadavg()
    results["finished"] = dt.datetime.now(dt.timezone.utc)
    return results


def _span(summary: dict) -> str:
    return f"{summary['wall']:.2f} ({summary['wall_min']:.2f}–{summary['wall_max']:.2f})"


def markdown(results: dict, command_line: str) -> str:
    machine, built = results["machine"], results["built"]
    dirty = " (the query files carry uncommitted changes: the working tree is what was measured as new)" \
        if results["dirty"] else ""
    reps = next(iter(next(iter(results["conditions"].values()))["commands"].values()))["old"]["n"] \
        if results["conditions"] else 0
    lines = [
        f"Generated by `{command_line}` on {results['started']:%Y-%m-%d %H:%M} UTC: old = commit "
        f"{results['commit']}, new = the working tree{dirty}.",
        "",
        f"**Store.** {built['runs']} pipeline runs, {built['records']} MLflow runs in all (pipeline, step, "
        f"cache-record and trial runs), {results['versions']} registered model versions, in SQLite "
        f"(`{built['uri']}`), written by `bench/queries/build.py` through `pipeline.tracking`, "
        "`pipeline.trial_tracking` and `pipeline.registry`.",
        "",
        "**Commands**, each `--tracking-uri` the store, run as `python -m pipeline ...`: "
        + "; ".join(f"`{' '.join(argv[:-2])}`" for argv in results["commands"].values()) + ".",
        "",
        f"**Machine.** {machine['cpus']} CPUs, {machine['memory_gib']:.1f} GiB, {machine['cpu']}; "
        f"{machine['platform']}; Python {machine['python']}, MLflow {machine['mlflow']}, SQLAlchemy "
        f"{machine['sqlalchemy']}, alembic {machine['alembic']}. Load average (1/5/15 min) before: "
        + " ".join(f"{value:.2f}" for value in results["load_before"]) + "; after: "
        + " ".join(f"{value:.2f}" for value in results["load_after"]) + ". Inherited environment: "
        + ", ".join(f"{key}={value}" for key, value in results["env"].items() if value) + "; MLflow's "
        + ("modules are" if results["compiled"] else "modules are not") + " compiled in the virtualenv.",
        "",
        f"Wall time in seconds, interpreter start to exit, median of {reps} fresh processes (min–max); "
        "CPU = user + system time of the process, median. Old and new alternate.",
        "",
    ]
    for condition, measured in results["conditions"].items():
        lines += [f"### {condition}", "",
                  "| command | old wall s | new wall s | old CPU s | new CPU s | new / old (wall) | new ≤ 2 s? "
                  "| same output |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for name, timing in measured["commands"].items():
            old, new = timing["old"], timing["new"]
            lines.append(f"| `{name}` | {_span(old)} | {_span(new)} | {old['cpu']:.2f} | {new['cpu']:.2f} | "
                         f"{new['wall'] / old['wall']:.2f}x | {'yes' if new['wall'] <= GOAL_S else 'no'} | "
                         f"{'yes' if timing['same_output'] else 'NO'} ({timing['lines']} lines) |")
        lines += ["", "| floor (same condition) | wall s | CPU s |", "|---|---:|---:|"]
        for label, summary in measured["floors"].items():
            lines.append(f"| {label} | {_span(summary)} | {summary['cpu']:.2f} |")
        lines.append("")
    lines += ["### MLflow client calls per query (in-process, store already open; bytecode; median of 3)", "",
              "| command | old calls | new calls | old query s | new query s | of which in the client, old / new |",
              "|---|---:|---:|---:|---:|---|"]
    for name, sides in results["probes"].items():
        old, new = sides["old"], sides["new"]
        lines.append(f"| `{name}` | {old['calls']} | {new['calls']} | {old['seconds']:.3f} | {new['seconds']:.3f} | "
                     f"{old['client_seconds']:.3f} / {new['client_seconds']:.3f} |")
    lines.append("")
    lines.append("Old: the collector as it was; new: as the commands now open the store (paused during the "
                 "imports, then `gc.freeze()`).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="Pipeline runs in the store.")
    parser.add_argument("--reps", type=int, default=5, help="Fresh processes per command, tree and condition.")
    parser.add_argument("--old", default="HEAD", help="The git revision whose pipeline/ and components/ are 'old'.")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "queries",
                        help="Where the store, the old tree and the bytecode cache are kept.")
    parser.add_argument("--rebuild", action="store_true", help="Write the store again.")
    parser.add_argument("--no-write", action="store_true", help="Print the Markdown, leave RESULTS.md alone.")
    arguments = parser.parse_args()
    command_line = shlex.join(["uv", "run", "python", "-m", "bench.queries.run", *sys.argv[1:]])
    text = markdown(measure(arguments), command_line)
    print(text)
    if not arguments.no_write:
        results_path = HERE / "RESULTS.md"
        kept = ""
        if results_path.exists() and NOTES_MARKER in results_path.read_text():
            kept = "\n" + NOTES_MARKER + results_path.read_text().split(NOTES_MARKER, 1)[1]
        results_path.write_text("# Benchmark results: the query commands\n\n" + text + kept)
        print(f"(written to {results_path})", file=sys.stderr)


if __name__ == "__main__":
    main()
