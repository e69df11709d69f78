"""`hps dissect`: split a trained TensorFlow/Keras model into HPS tables, a dense SavedModel,
a ps.json and a manifest.

Modules: bundle.py/sstable.py/protowire.py read checkpoints without TensorFlow;
object_graph.py recovers real variable names; source_types.py defines a source and its
variables, which sources.py and keras_files.py open from every supported input; inspect.py lists
variables and finds the tables; the rest runs in pipeline.py.
"""
