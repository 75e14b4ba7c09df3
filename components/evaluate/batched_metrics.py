"""TFMA metrics computed over batches: `Batched`, a TFMA metric that wraps another TFMA (or Keras)
metric, and `batched_config`, which wraps every metric of an EvalConfig in it.

`Batched` builds the wrapped metric's computations with TFMA's own code, with the same names,
keys, sub keys, derived computations (AUC from the histograms, macro averages, precision at top k)
and thresholds, and only swaps each combiner for its batched form
(`components.evaluate.batched_combiners`). The extracts must then be batches whose examples share
their slice values (`components.evaluate.extractors`), not single examples.
"""
from __future__ import annotations

import json
from typing import Any

from tensorflow_model_analysis.metrics import metric_specs, metric_types, tf_metric_wrapper
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.utils.keras_lib import tf_keras

from components.evaluate.batched_combiners import batched


def _inner(class_name: str, module: str, config: dict[str, Any], name: str | None = None):
    """The wrapped metric, named as the wrapper (TFMA renames a metric it copies for macro
    averages), or by its own default name."""
    if name is not None:
        config = {**config, "name": name}
    return metric_specs.metric_instance(config_pb2.MetricConfig(
        class_name=class_name, module=module, config=json.dumps(config)))


def _batched_computations(computations: metric_types.MetricComputations) -> metric_types.MetricComputations:
    result = []
    for computation in computations:
        if isinstance(computation, (metric_types.DerivedMetricComputation,
                                    metric_types.CrossSliceMetricComputation)):
            result.append(computation)  # computed from the combiners' outputs, not per example
            continue
        preprocessors = computation.preprocessors or []
        if any(type(preprocessor) is not metric_types.StandardMetricInputsPreprocessor
               for preprocessor in preprocessors):
            raise NotImplementedError(f"{computation.keys}: preprocessors {preprocessors} are not batched")
        # The batched combiners read the batch size from the labels and predictions, which the
        # default inputs hold (TFMA's example count filters them out).
        result.append(computation._replace(preprocessors=None, combiner=batched(computation.combiner)))
    return result


def _create_computations(name: str, class_name: str, module: str, config: dict[str, Any],
                         eval_config=None, schema=None, model_names=None, output_names=None, sub_keys=None,
                         aggregation_type=None, class_weights=None, example_weighted=False, query_key=None):
    if query_key:
        raise NotImplementedError(f"{name}: query-based metrics are not batched")
    inner = _inner(class_name, module, config, name)
    if isinstance(inner, metric_types.Metric):
        computations = inner.computations(
            eval_config=eval_config, schema=schema, model_names=model_names, output_names=output_names,
            sub_keys=sub_keys, aggregation_type=aggregation_type, class_weights=class_weights,
            example_weighted=example_weighted)
    elif isinstance(inner, (tf_keras.metrics.Metric, tf_keras.losses.Loss)):
        # As TFMA builds a Keras metric's computations: one per model and sub key, every output at once.
        computations = []
        for model_name in model_names or [""]:
            for sub_key in sub_keys or [None]:
                computations += tf_metric_wrapper.tf_metric_computations(
                    {output_name: [inner] for output_name in output_names or [""]}, eval_config=eval_config,
                    model_name=model_name, sub_key=sub_key, aggregation_type=aggregation_type,
                    class_weights=class_weights, example_weighted=example_weighted)
    else:
        raise NotImplementedError(f"{name}: {type(inner).__name__} is not a TFMA or Keras metric")
    return _batched_computations(computations)


class Batched(metric_types.Metric):
    """The metric `class_name` (a TFMA metric, or a Keras one when `module` is empty and TFMA has no
    metric of that name) with its `config`, computed over batches of examples."""

    def __init__(self, name: str, class_name: str, module: str = "", config: dict[str, Any] | None = None):
        super().__init__(_create_computations, name=name, class_name=class_name, module=module,
                         config=dict(config or {}))


def batched_metric(metric: config_pb2.MetricConfig) -> config_pb2.MetricConfig:
    """`metric` computed by `Batched`: the same name, thresholds and per-slice thresholds."""
    settings = json.loads(metric.config) if metric.config else {}
    name = settings.pop("name", None) or _inner(metric.class_name, metric.module, settings).name
    wrapped = config_pb2.MetricConfig()
    wrapped.CopyFrom(metric)
    wrapped.class_name, wrapped.module = Batched.__name__, __name__
    wrapped.config = json.dumps({"name": name, "class_name": metric.class_name, "module": metric.module,
                                 "config": settings})
    return wrapped


def batched_config(eval_config: config_pb2.EvalConfig) -> config_pb2.EvalConfig:
    """`eval_config` with every metric computed by `Batched`."""
    result = config_pb2.EvalConfig()
    result.CopyFrom(eval_config)
    for spec in result.metrics_specs:
        for index, metric in enumerate(spec.metrics):
            spec.metrics[index].CopyFrom(batched_metric(metric))
    return result
