"""``hps build-graph``: an inference package (Keras model with the HPS layers + dense SavedModel
+ tables + ps.json + manifest) from an ``hps dissect`` output or a dense SavedModel and a spec.
"""

from .pipeline import BuildOptions, BuildResult, build_graph

__all__ = ["BuildOptions", "BuildResult", "build_graph"]
