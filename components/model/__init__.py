"""The model module, with the fixed entry points of the penguin example's model module:

    space.py            the search space as the config declares it, and each knob's rules
    hyperparameters.py  the space on Keras Tuner's `hp`, a trial's values, the defaults
    preprocessing.py    the Keras preprocessing layers built from the transform
    network.py          `build_model(hp, transform)`: preprocessing, the searched network, the head
    data.py             the tf.data input tune and train share
"""
