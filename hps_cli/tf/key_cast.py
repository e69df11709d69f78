"""``KeyCast``: int64 ids -> the 32-bit keys of a config with ``supportlonglong`` false.

An inference package's id inputs are int64, so a caller may pass int32 or int64 ids alike
(Keras casts int32 up without loss). With 64-bit keys they reach the lookup layers as they are.
With 32-bit keys this layer sits in between: it checks that every id is a uint32 key (0 ..
2**32 - 1) or a negative int32 value, which it reads as unsigned as HPS reads int32 ids (-1 is
key 4294967295; an int32 id cast up by Keras arrives sign-extended), and passes int32 with the
same bits on, so an id out of range fails the call (``InvalidArgumentError`` naming the input)
instead of wrapping around. Dense tensors and
``tf.SparseTensor`` ids alike. Registered as ``hps>KeyCast``.
"""

from __future__ import annotations

from types import ModuleType

import tensorflow as tf

UINT32_MAX = 2**32 - 1
INT32_MIN = -(2**31)


def to_32_bit_keys(ids: tf.Tensor, where: str) -> tf.Tensor:
    """int32 keys with the bits of ``ids`` read as uint32; fails for ids outside
    [-2**31, 2**32 - 1] (negative ones are int32 ids, read as unsigned)."""
    ids = tf.convert_to_tensor(ids)
    if ids.dtype == tf.int32:
        return ids
    wide = tf.cast(ids, tf.int64)
    message = (
        f"{where}: ids must be uint32 keys (0 .. {UINT32_MAX}) or int32 values read as "
        "unsigned: supportlonglong is false"
    )
    checks = [
        tf.debugging.assert_greater_equal(wide, tf.constant(INT32_MIN, tf.int64), message=message),
        tf.debugging.assert_less_equal(wide, tf.constant(UINT32_MAX, tf.int64), message=message),
    ]
    with tf.control_dependencies([c for c in checks if c is not None]):
        # The low 32 bits are the uint32 key (of a negative int32 id too).
        low = tf.bitwise.bitwise_and(wide, tf.constant(0xFFFFFFFF, tf.int64))
        return tf.bitcast(tf.cast(low, tf.uint32), tf.int32)


def key_cast_class(keras: ModuleType):
    """Build (and register under package "hps") the KeyCast layer for one Keras."""

    @keras.saving.register_keras_serializable(package="hps", name="KeyCast")
    class KeyCast(keras.layers.Layer):
        """``KeyCast()(ids)``: int64 (or int32) ids -> int32 32-bit keys, range-checked."""

        def __init__(self, **kwargs):
            kwargs.setdefault("trainable", False)
            super().__init__(**kwargs)
            self.supports_jit = False

        def build(self, *shapes, **named_shapes):
            self.built = True

        def call(self, ids):
            if isinstance(ids, tf.SparseTensor):
                values = to_32_bit_keys(ids.values, self.name)
                return tf.SparseTensor(ids.indices, values, ids.dense_shape)
            return to_32_bit_keys(ids, self.name)

        def compute_output_shape(self, input_shape):
            return input_shape

    return KeyCast
