"""The HPS TensorFlow plugin, name-compatible with NVIDIA's ``hierarchical_parameter_server``.

    import hps_cli.tf as hps            # instead of: import hierarchical_parameter_server as hps

    hps.Init(global_batch_size=1024, ps_config_file="ps.json")
    emb = hps.LookupLayer(model_name="dlrm", table_id=0, emb_vec_size=16,
                          emb_vec_dtype=tf.float32)(ids)                  # tf.nn.embedding_lookup
    vec = hps.SparseLookupLayer("dlrm", 1, 16, tf.float32)(sp_ids, combiner="mean")
    model = hps.load_model("package/")  # what `hps build-graph` wrote
    hps.export_saved_model(model, "export/1")  # a SavedModel that needs only TensorFlow

Lookups go through the process-wide ``hps_cli.runtime.HPS`` of the config (its embedding
caches in front of the CPU tiers). ``LookupLayer``/``SparseLookupLayer``/``DenseSavedModel``
are the classes for the Keras that ``tf.keras`` means in this process (Keras 3, or tf_keras
with ``TF_USE_LEGACY_KERAS=1``); ``layers_for("tf_keras")`` / ``layers_for(keras_module)``
gives (and registers) the other flavour's. ``export_saved_model`` traces a model with these
layers into a SavedModel whose lookups are stock TensorFlow ops over the tables embedded as
variables (TF Serving, Triton, no hps needed to load it). Importing this module imports
TensorFlow and that Keras; it prints nothing and changes no settings.
"""

from __future__ import annotations

from ..common.tf_loader import import_tensorflow

# Before the modules below import TensorFlow: quietly (its native load-time lines stay off
# stderr), with the devices and log level of the program as they are.
import_tensorflow("the HPS TensorFlow layers", command=False)

from . import process_runtime  # noqa: E402
from .errors import LookupInputError  # noqa: E402
from .flavour import default_flavour  # noqa: E402
from .flavour_layers import layers_for  # noqa: E402
from .lookup_ops import lookup, sparse_lookup  # noqa: E402
from .package import load_model, read_package  # noqa: E402
from .process_runtime import shutdown as Shutdown  # noqa: E402
from .saved_model_export import export_saved_model  # noqa: E402


def Init(global_batch_size: int, ps_config_file: str) -> str:  # noqa: N802 (HPS's name)
    """Initialize HPS from ``ps_config_file`` once per process; returns "OK".

    A later call with another file is ignored with a warning, as in HPS. ``global_batch_size``
    must not exceed any model's ``max_batch_size`` (one replica).
    """
    return process_runtime.init(global_batch_size, ps_config_file)


_default = layers_for(default_flavour())
LookupLayer = _default.LookupLayer
SparseLookupLayer = _default.SparseLookupLayer
DenseSavedModel = _default.DenseSavedModel

__all__ = [
    "Init",
    "LookupLayer",
    "SparseLookupLayer",
    "DenseSavedModel",
    "load_model",
    "read_package",
    "export_saved_model",
    "layers_for",
    "lookup",
    "sparse_lookup",
    "Shutdown",
    "LookupInputError",
]
