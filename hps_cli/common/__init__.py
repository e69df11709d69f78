"""Helpers that several parts of hps_cli share (commands, dissect, formats, build_graph, serve,
bench). Each module imports neither click nor TensorFlow nor h5py at import time.

Modules: ``tf_loader`` (TensorFlow and Keras, imported on demand and quietly), ``units`` (human
readable sizes), ``keras2_h5`` (the Keras 2 ``.h5`` weight layout), ``custom_objects`` (the user
code a model needs: ``--custom-objects MODULE[:ATTR]``).
"""
