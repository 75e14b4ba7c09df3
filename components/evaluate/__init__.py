"""The evaluate step: TFMA over the held-out split, candidate against baseline, and the blessing.

    config.py             the `evaluation` config section
    metrics.py            the metrics thresholds can name, and which way is better
    blessing.py           the policy: which thresholds apply, how a failure is measured and described
    tfma_inputs.py        the held-out split as tf.Examples for TFMA, in batches grouped by slice values
    extractors.py         TFMA's extractors keeping batches whole, and a batch's slice keys
    batched_metrics.py    a TFMA metric computed over batches, and the EvalConfig that uses it
    batched_combiners.py  TFMA's metric combiners with their per-example step done per batch
    progress.py           the running count of rows evaluated, for a progress callback
    tfma_runner.py        TFMA's EvalConfig, its Beam pipeline, and reading its output
    report.py             the Markdown report and the terminal lines
    step.py               `run`, which writes the `evaluation` artifact
    unchanged.py          the verdict when the candidate is the served version (no TFMA)
"""
