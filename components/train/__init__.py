"""The train step: the best hyperparameters, early stopping, the exported SavedModel.

    config.py      the `training` config section
    warm_start.py  starting from an earlier model's weights
    export.py      the SavedModel with the serving signatures
    step.py        `run`, which writes the `model` artifact
"""
