"""The error a lookup raises: an hps ``InvalidInputError`` that is also a ``ValueError``.

Raised inside ``tf.numpy_function`` it reaches graph callers (``tf.function``, ``predict``) as
``tf.errors.InvalidArgumentError`` carrying the same one-line message (TensorFlow maps
ValueError to InvalidArgument and anything else to Unknown); in eager code it propagates as
itself, so ``except InvalidInputError`` and ``except ValueError`` both catch it.
"""

from __future__ import annotations

from ..runtime.errors import HpsError, InvalidInputError


class LookupInputError(InvalidInputError, ValueError):
    """A lookup's arguments or keys do not fit the HPS config (table, dim, dtype, batch)."""

    default_hint = "pass the keys of each table as the layer's config (ps.json) describes them"

    @classmethod
    def from_error(cls, exc: HpsError) -> "LookupInputError":
        if isinstance(exc, cls):
            return exc
        return cls(exc.message, location=exc.location, hint=exc.hint)
