"""One query, in-process, in the tree on `sys.path`: how many MLflow client calls it makes and how long
they take, after the store is open (imports not counted). Run by `bench/queries/run.py` once per tree
in a fresh process; prints one JSON line.

    python bench/queries/probe.py runs|trials|lineage ARGUMENT TRACKING_URI [--freeze]

`--freeze` opens the store as the new `tunepipe` commands do (collector paused during the imports,
then `gc.freeze()`); without it the collector runs as it did before.
"""
from __future__ import annotations

import collections
import gc
import json
import sys
import time

CLIENT_CALLS = ("search_runs", "get_run", "search_experiments", "get_experiment", "get_experiment_by_name",
                "search_model_versions", "get_model_version", "get_model_version_by_alias", "get_registered_model")


def main() -> None:
    command, argument, uri = sys.argv[1:4]
    freeze = "--freeze" in sys.argv
    if freeze:
        gc.disable()
    from pipeline import queries

    store = queries.Store(uri)
    if freeze:
        gc.freeze()
        gc.enable()
    calls: collections.Counter = collections.Counter()
    seconds: collections.Counter = collections.Counter()
    for name in CLIENT_CALLS:
        original = getattr(store.client, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                calls[_name] += 1
                seconds[_name] += time.perf_counter() - started

        setattr(store.client, name, counted)
    started = time.perf_counter()
    if command == "runs":
        answer = len(queries.pipeline_runs(None, store=store))
    elif command == "trials":
        answer = len(queries.trials(argument, store=store).rows)
    else:
        answer = len(queries.lineage(argument, store=store).nodes)
    total = time.perf_counter() - started
    print(json.dumps({"command": command, "answer": answer, "seconds": total, "calls": sum(calls.values()),
                      "by_call": dict(calls), "client_seconds": sum(seconds.values())}))


if __name__ == "__main__":
    main()
