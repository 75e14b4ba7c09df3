"""The ingest step: read the source table with Beam as Arrow record batches, validate it, split it
by a stable hash and write Parquet shards per split with the schema and statistics.

    config.py   the `data` config section
    infer.py    the schema, inferred from a sample of the first file and the config
    blocks.py   per-block work inside Beam: cast, reject, drop unlabeled rows, split
    step.py     the Beam pipeline and `run`, which writes the `examples` artifact
"""
