"""``LookupLayer`` and ``SparseLookupLayer``: NVIDIA HPS's Keras layers, for Keras 3 and tf_keras.

The classes are built per Keras flavour (``lookup_layer_classes(keras_module)``) from one
definition and registered as ``hps>LookupLayer`` / ``hps>SparseLookupLayer`` in that Keras's
registry, so a saved model names them the same under both. Everything a layer needs is in its
``get_config`` (model name, table id, dim, dtype, config path, batch size), all JSON; a layer
rebuilt from its config creates its lookup ops afresh, which is what makes saved models reload
in a fresh process (a traced ``tf.numpy_function`` cannot be restored).
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

from . import lookup_ops, process_runtime
from .errors import LookupInputError

PACKAGE = "hps"


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < minimum:
        raise LookupInputError(
            f"{name} must be an integer >= {minimum}, got {value!r}", location=name
        )
    return int(value)


def _name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise LookupInputError(
            f"model_name must be a non-empty string, got {value!r}", location="model_name"
        )
    return value


def lookup_layer_classes(keras: ModuleType) -> SimpleNamespace:
    """Build (and register under package "hps") the two lookup layers for one Keras module."""
    register = keras.saving.register_keras_serializable

    class _HpsLayer(keras.layers.Layer):
        def __init__(
            self,
            model_name,
            table_id,
            emb_vec_size,
            emb_vec_dtype="float32",
            ps_config_file="",
            global_batch_size=1,
            **kwargs,
        ):
            kwargs.setdefault("trainable", False)
            super().__init__(**kwargs)
            self.model_name = _name(model_name)
            self.table_id = _int(table_id, "table_id", 0)
            self.emb_vec_size = _int(emb_vec_size, "emb_vec_size", 1)
            self.emb_vec_dtype = lookup_ops.check_vector_dtype(emb_vec_dtype)
            self.ps_config_file = lookup_ops.as_config_path(ps_config_file)
            # Resolved now: a layer loaded by load_model resolves a relative path against the
            # package (get_config keeps the path as given, so the package stays relocatable).
            self._config_path = (
                str(process_runtime.resolve_path(self.ps_config_file))
                if self.ps_config_file
                else None
            )
            self.global_batch_size = process_runtime.check_global_batch_size(global_batch_size)
            self.supports_jit = False  # a numpy_function cannot be XLA-compiled (Keras 3)

        def build(self, *shapes, **named_shapes):
            # Model, table id and dim are checked as soon as the layer is built (the id dtype
            # when it is called), against its own config file or the running runtime.
            lookup_ops.check_layer(
                self.model_name, self.table_id, self.emb_vec_size, self._config_path
            )
            self.built = True

        def _table_args(self) -> dict:
            return {
                "model_name": self.model_name,
                "table_id": self.table_id,
                "emb_vec_size": self.emb_vec_size,
                "ps_config_file": self._config_path,
                "global_batch_size": self.global_batch_size,
            }

        def get_config(self) -> dict:
            config = super().get_config()
            config.update(
                model_name=self.model_name,
                table_id=self.table_id,
                emb_vec_size=self.emb_vec_size,
                emb_vec_dtype=self.emb_vec_dtype,
                ps_config_file=self.ps_config_file,
                global_batch_size=self.global_batch_size,
            )
            return config

    @register(package=PACKAGE, name="LookupLayer")
    class LookupLayer(_HpsLayer):
        """One vector per id (``tf.nn.embedding_lookup``), any id rank; non-trainable.

        ``LookupLayer(model_name, table_id, emb_vec_size, emb_vec_dtype, ps_config_file="",
        global_batch_size=1)``; ``call(ids, max_norm=None)`` → ``ids.shape + [emb_vec_size]``.
        With ``ps_config_file`` the first lookup initializes HPS (lazy initialization).
        """

        def call(self, inputs, max_norm=None):
            return lookup_ops.lookup(
                inputs, max_norm=max_norm, name=f"{self.name}_lookup", **self._table_args()
            )

        def compute_output_shape(self, input_shape):
            return tuple(input_shape) + (self.emb_vec_size,)

    @register(package=PACKAGE, name="SparseLookupLayer")
    class SparseLookupLayer(_HpsLayer):
        """One combined vector per row (``tf.nn.embedding_lookup_sparse``); non-trainable.

        ``call(sp_ids, sp_weights=None, name=None, combiner=None, max_norm=None)``: ``sp_ids``
        a rank-2 ``tf.SparseTensor`` of ids, ``sp_weights`` None or a SparseTensor with the
        same indices, ``combiner`` "mean" (default), "sum" or "sqrtn".
        """

        def call(self, sp_ids, sp_weights=None, name=None, combiner=None, max_norm=None):
            return lookup_ops.sparse_lookup(
                sp_ids,
                sp_weights,
                combiner=combiner,
                max_norm=max_norm,
                name=name or f"{self.name}_lookup",
                **self._table_args(),
            )

        def compute_output_shape(self, input_shape, *args, **kwargs):
            return (tuple(input_shape)[0], self.emb_vec_size)

    return SimpleNamespace(LookupLayer=LookupLayer, SparseLookupLayer=SparseLookupLayer)
