"""`hps dissect`: split a trained TensorFlow/Keras model into HPS tables, a dense SavedModel,
a ps.json and a manifest.

Modules: bundle.py/sstable.py/protowire.py read checkpoints without TensorFlow;
object_graph.py recovers real variable names; sources.py and keras_files.py open every supported
input; inspect.py lists variables and finds the tables; the rest runs in pipeline.py.
"""
