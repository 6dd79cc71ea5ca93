"""Finding a user's class named in a config as "package.module:ClassName" (an algorithm, a task
family, an inner-loop optimizer), with one-line errors.

The bottom of the import order: standard library only, so every layer can use it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any


class PluginError(ValueError):
    """A named class that cannot be found, imported or built; the message is one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def import_class(spec: str, what: str, malformed: str) -> type:
    """The class that `spec` ("package.module:Attr.Path") names. `what` names the kind in
    messages ("task family"); `malformed` is the message for a spec without both parts."""
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise PluginError(malformed)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # a user's module may fail in any way while importing
        raise PluginError(f"cannot import {what} module {module_name!r}: {type(error).__name__}: {first_line(error)}") from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise PluginError(f"module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if not inspect.isclass(obj):
        raise PluginError(f"{what} {spec!r} is not a class (it is a {type(obj).__name__})")
    return obj


def check_settings(cls: type, settings: Mapping[str, Any], key: str, fixed: int = 0) -> None:
    """Whether `cls(<fixed positional arguments>, **settings)` binds; `key` is the config key
    the settings come from, named in the one-line error with the settings the class takes."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # no signature to check against; the constructor call will tell
    parameters = list(signature.parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        allowed = [p.name for p in parameters[fixed:]
                   if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        for name in settings:
            if name not in allowed:
                raise PluginError(f"{key}: {cls.__name__} got an unexpected keyword {name!r} (allowed: {', '.join(allowed) or 'none'})")
    try:
        signature.bind(*([None] * fixed), **settings)
    except TypeError as error:
        raise PluginError(f"{key}: {cls.__name__}: {first_line(error)}") from None
