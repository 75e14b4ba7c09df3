"""The preprocess step: full-pass analyzers over the train split.

    config.py   the `preprocess` config section
    step.py     the Beam pipeline and `run`, which writes the `transform` artifact
"""
