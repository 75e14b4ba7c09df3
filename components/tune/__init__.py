"""The tune step: a Keras Tuner search over the configured search space.

    config.py      the `tuner` config section
    algorithms.py  the algorithm table: Keras Tuner class, arguments, expected trial count
    observer.py    the events a search reports (trial began, epoch ended, trial ended)
    trials.py      each trial's record file and the trials table
    artifact.py    the `tuning` artifact
    reuse.py       whether retraining may reuse an earlier search, and the artifact that does
    step.py        the search itself: `run`
"""
