"""Keeps ``import deepctr`` off the network in the test processes that import it.

DeepCTR 0.9.4's ``__init__`` starts a (non-daemon) thread that asks PyPI for its latest version
with ``requests.get`` and no timeout, and prints "Please check the latest version manually" to
stdout when that fails. Tests must not depend on PyPI (and their stdout is parsed), and there
is no setting to turn the check off, so this module answers PyPI's URL with a refusal before
DeepCTR is imported; other URLs go through. Import it first: the training script does, and the
hps commands under test get ``--custom-objects deepctr_offline`` before
``--custom-objects deepctr.layers:custom_objects`` (it lies on their PYTHONPATH), which also
makes the packages they write import it first in ``hps serve`` and ``load_model``.
"""

from __future__ import annotations

import requests

_get = requests.get


class _Refused:
    status_code = 503  # not requests.codes.ok: DeepCTR then neither logs nor prints
    text = "{}"


def _get_offline(url, *args, **kwargs):
    if "pypi" in str(url):
        return _Refused()
    return _get(url, *args, **kwargs)


requests.get = _get_offline
