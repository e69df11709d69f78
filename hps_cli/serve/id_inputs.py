"""Id inputs of inference models: INT32 and INT64 alike, range-checked, as int64 keys.

A model's ids have the dtype the model was trained with (often int32), while HPS keys are int64
(``supportlonglong`` true) or 32-bit (false) and the package's Keras model takes the config's
key type. Clients should not have to know which one a server checks, so an id input takes
either integer type, whatever its metadata says (the original dtype). The values become int64
keys; with 32-bit keys (``supportlonglong`` false) every id must fit uint32, as for the lookup
models and the package's ``KeyCast`` layer. Ids the dense part also reads directly must fit
its dtype.
"""

from __future__ import annotations

import numpy as np

from .protocol import Tensor, invalid

ID_DATATYPES = ("INT32", "INT64")
UINT32_MAX = 2**32 - 1


def check_id_datatype(tensor: Tensor, model_dtype: str) -> None:
    """Refuse anything but INT32 and INT64, saying both are taken."""
    if tensor.datatype not in ID_DATATYPES:
        raise invalid(
            f"ids must be INT32 or INT64 (either is accepted; the model was trained with "
            f"{model_dtype}), got {tensor.datatype}",
            tensor.name,
        )


def as_keys(array: np.ndarray, long_keys: bool, name: str) -> np.ndarray:
    """Ids as int64 HPS keys; 400 for ids outside uint32 when keys are 32-bit."""
    if not long_keys:
        if array.size and (array.min() < 0 or array.max() > UINT32_MAX):
            raise invalid(
                "ids must fit uint32 (0 .. 4294967295): supportlonglong is false in the config",
                name,
            )
    return array.astype(np.int64, copy=False)


def fit_dtype(array: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Ids cast to the integer dtype the dense part reads them as; 400 when one does not fit."""
    target = np.dtype(dtype)
    if target.kind not in "iu" or array.dtype == target:
        return array
    info = np.iinfo(target)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise invalid(f"ids must fit {dtype} ({info.min} .. {info.max})", name)
    return array.astype(target)
