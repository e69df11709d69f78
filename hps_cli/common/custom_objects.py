"""User code a model needs: ``--custom-objects MODULE[:ATTR]`` and ``custom_objects=``.

A model built with a third-party library (DeepCTR's ``Concat``, ``DNN``, ...) loads in Keras
only with the library's classes registered, and a SavedModel that uses custom TensorFlow ops
loads only after the library that registers them was imported. A spec names that code:

- ``MODULE`` is imported; that alone registers classes decorated with
  ``register_keras_serializable`` and custom ops;
- ``MODULE:ATTR`` also takes ``ATTR`` (dotted names allowed) from it: a dict of name -> class
  or function, a list/tuple of classes or functions (registered under their ``__name__``), a
  class, or a function returning one of those (``deepctr.layers:custom_objects``).

Library callers may pass dicts as well. Only specs can be recorded in a manifest (dicts are not
data), which is how ``hps serve`` and ``hps_cli.tf.load_model`` find the code again.

Keras 3 and tf_keras classes are not interchangeable: a library built on ``tf.keras`` defines
tf_keras classes only when ``TF_USE_LEGACY_KERAS=1`` was set before TensorFlow was imported
(``use_keras_of`` does that for a model file's Keras, while it still can), and a model is
refused with a clear error when the classes are of the other Keras.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..runtime.errors import DependencyMissingError, HpsError, InvalidInputError
from .tf_loader import import_tensorflow

KERAS3, TF_KERAS = "keras3", "tf_keras"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"  # ASCII, as the manifest schema's pattern
_SPEC = re.compile(rf"^({_NAME}(?:\.{_NAME})*)(?::({_NAME}(?:\.{_NAME})*))?$")


def _where(spec: str) -> str:
    return f"--custom-objects {spec}"


class CustomObjectsMissingError(DependencyMissingError):
    """The module a spec names (or one it imports) is not installed (exit 5)."""

    def __init__(self, spec: str, module: str, detail: str):
        HpsError.__init__(
            self,
            f"cannot import '{module}': {detail}",
            location=_where(spec),
            hint=f"install the package that provides '{module.split('.')[0]}' in this "
            "environment, or put the folder holding it on PYTHONPATH (check the spelling)",
        )
        self.package = module
        self.extra = ""


@dataclass
class CustomObjects:
    """What a list of specs and dicts resolved to."""

    specs: list[str] = field(default_factory=list)  # the specs given, in order (recordable)
    objects: dict[str, object] = field(default_factory=dict)  # name -> class or function

    def __bool__(self) -> bool:
        return bool(self.specs or self.objects)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"pkg.mod:attr"`` -> ``("pkg.mod", "attr")``; ``"pkg.mod"`` -> ``("pkg.mod", None)``."""
    match = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise InvalidInputError(
            f"not a MODULE[:ATTR] spec: {spec!r}",
            location=_where(str(spec)),
            hint="e.g. --custom-objects deepctr.layers:custom_objects, or a module name alone",
        )
    return match.group(1), match.group(2)


def _import(spec: str, module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise CustomObjectsMissingError(spec, missing, str(exc)) from exc
    except Exception as exc:  # the module's own code failed: report it, it is the user's input
        raise InvalidInputError(
            f"importing '{module}' failed: {type(exc).__name__}: {str(exc)[:300]}",
            location=_where(spec),
            hint="fix the module, or rerun with --debug for the traceback",
        ) from exc


def _as_objects(value: object, where: str) -> dict[str, object]:
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise InvalidInputError(
                f"the dict's keys must be class names (strings), got {bad[0]!r}",
                location=where,
            )
        return dict(value)
    if isinstance(value, type):
        return {value.__name__: value}
    if isinstance(value, (list, tuple, set, frozenset)):
        out = {}
        for item in value:
            name = getattr(item, "__name__", None)
            if not isinstance(name, str):
                raise InvalidInputError(
                    f"cannot register {item!r}: a list must hold classes or functions",
                    location=where,
                )
            out[name] = item
        return out
    raise InvalidInputError(
        f"{type(value).__name__} is not a dict, list or class of custom objects",
        location=where,
        hint="ATTR must name a dict of name -> class, a list of classes, a class, or a "
        "function returning one of them",
    )


def _tensorflow_first() -> None:
    """Such modules import TensorFlow themselves: import it before them, quietly (its native
    load-time lines stay off stderr). Call ``use_keras_of`` before."""
    try:
        import_tensorflow("--custom-objects")
    except DependencyMissingError:
        pass  # the module's own import will say what is missing, if it needs TensorFlow


def load_spec(spec: str) -> dict[str, object]:
    """Import a spec's module; its objects (empty for a module alone)."""
    module_name, attr = parse_spec(spec)
    _tensorflow_first()
    module = _import(spec, module_name)
    if attr is None:
        return {}
    value = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise InvalidInputError(
                f"module '{module_name}' has no attribute '{attr}'",
                location=_where(spec),
                hint="public names: "
                + ", ".join(sorted(n for n in dir(module) if not n.startswith("_"))[:20]),
            )
        value = getattr(value, part)
    if callable(value) and not isinstance(value, type):
        try:
            value = value()
        except Exception as exc:
            raise InvalidInputError(
                f"calling '{attr}' failed: {type(exc).__name__}: {str(exc)[:300]}",
                location=_where(spec),
            ) from exc
    return _as_objects(value, _where(spec))


def allow_cwd_imports() -> None:
    """Let ``hps`` (a console script, whose sys.path lacks the working directory) import a
    module that sits there, as ``python -m`` would; appended, so installed modules win.
    Commands call it; library calls leave the caller's sys.path alone."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def resolve(items: str | Mapping | Sequence | None) -> CustomObjects:
    """Import every spec of ``items`` (a spec, a dict, or a sequence of them), in order."""
    if items is None:
        return CustomObjects()
    if isinstance(items, (str, Mapping)):
        items = [items]
    found = CustomObjects()
    for item in items:
        if isinstance(item, Mapping):
            found.objects.update(_as_objects(item, "custom_objects"))
        elif isinstance(item, str):
            found.objects.update(load_spec(item))
            if item.strip() not in found.specs:
                found.specs.append(item.strip())
        else:
            raise InvalidInputError(
                f"custom_objects entries must be MODULE[:ATTR] strings or dicts, "
                f"got {type(item).__name__}",
                location="custom_objects",
            )
    return found


def use_keras_of(flavour: str) -> None:
    """Make ``tf.keras`` the Keras that wrote a model (tf_keras or Keras 3) in this process,
    so user code built on ``tf.keras`` defines classes that Keras can load it with. Possible
    only before TensorFlow is imported; afterwards ``check_keras`` reports a mismatch."""
    if "tensorflow" in sys.modules:
        return
    if flavour == TF_KERAS:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    elif flavour == KERAS3:
        os.environ["TF_USE_LEGACY_KERAS"] = "0"


def keras_of_class(obj: object) -> str | None:
    """keras3 or tf_keras for a class derived from one of them, else None."""
    if not isinstance(obj, type):
        return None
    for base in obj.__mro__:
        root = (base.__module__ or "").split(".")[0]
        if root == TF_KERAS:
            return TF_KERAS
        if root == "keras":
            return KERAS3
    return None


def check_keras(objects: Mapping[str, object], flavour: str, location: str) -> None:
    """Refuse classes of the other Keras than the model's (Keras would fail deep inside)."""
    other = sorted(
        name
        for name, obj in objects.items()
        if keras_of_class(obj) not in (None, flavour) and flavour in (KERAS3, TF_KERAS)
    )
    if not other:
        return
    wanted = "tf_keras (Keras 2)" if flavour == TF_KERAS else "Keras 3"
    setting = "TF_USE_LEGACY_KERAS=1" if flavour == TF_KERAS else "TF_USE_LEGACY_KERAS unset"
    raise InvalidInputError(
        f"the model was written by {wanted}, but the custom classes "
        f"{', '.join(other[:8])} are {'Keras 3' if flavour == TF_KERAS else 'tf_keras'} "
        "classes",
        location=location,
        hint=f"run with {setting} so that tf.keras is the model's Keras when the library is "
        "imported (hps sets it itself when TensorFlow is not imported yet)",
    )


def resolve_recorded(specs: Sequence[str]) -> tuple[CustomObjects, list[str]]:
    """Import the specs a manifest records; (what was found, a warning per spec that failed).

    A recorded spec that cannot be imported here is skipped, not fatal: a package's dense
    SavedModel needs user code only for custom TensorFlow ops (Keras layers were traced into
    plain ops), so it usually loads without the library; if it does not, the loader's error
    follows the warning.
    """
    found, warnings = CustomObjects(), []
    for spec in specs or []:
        try:
            found.objects.update(load_spec(spec))
        except HpsError as exc:
            warnings.append(
                f"the package names --custom-objects {spec}, which cannot be imported here "
                f"({exc.message}); loading without it"
            )
            continue
        found.specs.append(spec)
    return found, warnings


def merged_specs(*groups: Sequence[str]) -> list[str]:
    """The specs of several lists, in order, each once."""
    return list(dict.fromkeys(spec for group in groups for spec in group or []))
