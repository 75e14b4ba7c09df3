"""The evaluate step: TFMA over the held-out split, candidate against baseline, and the blessing.

    config.py       the `evaluation` config section
    metrics.py      the metrics thresholds can name, and which way is better
    blessing.py     the policy: which thresholds apply, how a failure is measured and described
    tfma_inputs.py  the held-out split as tf.Examples for TFMA
    tfma_runner.py  TFMA's EvalConfig, its Beam pipeline, and reading its output
    report.py       the Markdown report and the terminal lines
    step.py         `run`, which writes the `evaluation` artifact
"""
