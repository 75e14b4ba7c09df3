"""Loaded by every Python process of a `tunepipe run` that the fault suite starts with this directory
on PYTHONPATH (the run, kfp.local's task processes, the step server and so its forks), and by no
other. With TUNEPIPE_KILL_AT naming one of these moments, the process that reaches it kills the
whole run the hard way: SIGKILL to the run's process group (the session's), then to itself.

- tune.after-its-run: the tune step's MLflow run has just closed FINISHED; the step has not
  returned to kfp.local, which has not cached its output (the next run runs the step again).

At the file-system calls of `components.push` in the serving directory:
- push.before-copy: the hidden copy's directory is about to be made (nothing copied yet);
- push.before-rename: the copy is complete, the rename that makes it a version is about to run;
- push.after-rename: the version is visible, the registry not told yet.
"""
import os
import signal

_AT = os.environ.get("TUNEPIPE_KILL_AT", "")
_LEDGER = os.environ.get("TUNEPIPE_KILL_LEDGER", "")


def _kill(moment: str, path: str) -> None:
    with open(_LEDGER, "a", encoding="utf-8") as ledger:
        ledger.write(f"{moment} {os.getpid()} {path}\n")
    os.killpg(os.getsid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _partial(path) -> bool:
    """A push's hidden copy (`.<version>.partial-<id>`), not another step's partial artifact."""
    name = os.path.basename(os.fspath(path))
    return name.startswith(".") and name[1:].split(".partial-")[0].isdigit() and ".partial-" in name


if _AT.startswith("push."):
    _mkdir, _rename = os.mkdir, os.rename

    def mkdir(path, *args, **kwargs):
        if _AT == "push.before-copy" and _partial(path):
            _kill(_AT, os.fspath(path))
        return _mkdir(path, *args, **kwargs)

    def rename(source, target, *args, **kwargs):
        into_serving = _partial(source) and os.path.basename(os.fspath(target)).isdigit()
        if _AT == "push.before-rename" and into_serving:
            _kill(_AT, os.fspath(target))
        _rename(source, target, *args, **kwargs)
        if _AT == "push.after-rename" and into_serving:
            _kill(_AT, os.fspath(target))

    os.mkdir, os.rename = mkdir, rename

elif _AT == "tune.after-its-run":
    import importlib.abc
    import importlib.util
    import sys

    class _AfterTheTuneRun(importlib.abc.MetaPathFinder):
        """Wraps MLflow's `end_run` as MLflow is imported (a `with mlflow.start_run()` ends through it)."""

        def find_spec(self, name, path, target=None):
            if name != "mlflow.tracking.fluent":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                end_run = module.end_run

                def ending(status="FINISHED"):
                    import mlflow

                    active = module.active_run()
                    recorded = mlflow.MlflowClient().get_run(active.info.run_id).data.tags if active else {}
                    end_run(status)
                    if (status == "FINISHED" and recorded.get("tunepipe.step") == "tune"
                            and recorded.get("tunepipe.cached") == "false"):
                        _kill(_AT, active.info.run_id)

                module.end_run = ending

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _AfterTheTuneRun())
