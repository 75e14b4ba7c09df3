"""Steps for the tests of the warm step server (tests/pipeline/test_step_server.py): a server
process started by the test adds them to its registry, and a task process asks for them by name."""
from __future__ import annotations

import os
import sys
import time
from collections import namedtuple

from components.errors import DataError
from pipeline import launcher, step_generations, steps

STEPS = (
    steps.Step("echo", "json:dumps", "server_steps:echo", lambda facts: "", outputs=("out",),
               libraries=("xml.dom.minidom",)),
    steps.Step("loaded", "json:dumps", "server_steps:loaded", lambda facts: ""),
    steps.Step("failing", "json:dumps", "server_steps:failing", lambda facts: ""),
    steps.Step("sleepy", "json:dumps", "server_steps:sleepy", lambda facts: ""),
    steps.Step("slow", "json:dumps", "server_steps:slow", lambda facts: "", libraries=("slow_library",)),
    steps.Step("preparing", "json:dumps", "server_steps:loaded", lambda facts: "", prepares=("later_library",)),
    steps.Step("later", "json:dumps", "server_steps:later", lambda facts: ""),
)


def echo(context: launcher.StepContext) -> launcher.Outcome:
    print(f"echo: to stdout {context.parameters['word']}")
    print(f"echo: to stderr {os.getcwd()} {os.environ.get('ECHO_VARIABLE')}", file=sys.stderr)
    returns = namedtuple("EchoOutputs", ["word", "pid"])(context.parameters["word"], os.getpid())
    return launcher.Outcome(facts={"rows": 3, "word": context.parameters["word"]}, returns=returns)


def loaded(context: launcher.StepContext) -> launcher.Outcome:
    """Whether the library `echo` declares was imported before this step's work began."""
    return launcher.Outcome(returns="xml.dom.minidom" in sys.modules)


def slow(context: launcher.StepContext) -> launcher.Outcome:
    """Whether the library it needs was imported before its work began; then imports it."""
    loaded = "slow_library" in sys.modules
    with open(context.parameters["pid_file"], "w") as handle:
        handle.write(str(os.getpid()))
    import slow_library  # noqa: F401

    return launcher.Outcome(returns=loaded)


def later(context: launcher.StepContext) -> launcher.Outcome:
    """Whether the library `preparing` prepares was imported before this step's work began."""
    return launcher.Outcome(returns="later_library" in sys.modules)


def failing(context: launcher.StepContext) -> launcher.Outcome:
    raise DataError("the table /data/t.csv has no column 'label'")


def sleepy(context: launcher.StepContext) -> launcher.Outcome:
    with open(context.parameters["pid_file"], "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(120)
    return launcher.Outcome()


def register() -> None:
    steps.BY_NAME.update({step.name: step for step in STEPS})


def serve(address: str) -> None:
    """The server, with these steps in its registry."""
    register()
    step_generations.serve(address)


if __name__ == "__main__":
    serve(sys.argv[1])
