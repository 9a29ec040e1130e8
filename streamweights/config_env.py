"""Environment references in config values: ``${NAME}``, ``${NAME:-default}``, ``$$``.

Why: one config file (a Kubernetes ConfigMap) serves every replica, yet a few values must
differ per pod, above all the Kafka static-membership id and transactional id, which must
be the pod's own stable name. Kubernetes puts the pod name into an environment variable
(the downward API); a config value ``"${POD_NAME}"`` picks it up.

Rules, applied to string values only (never to keys), before validation:

* ``${NAME}`` is the variable's value; an unset variable is an error naming the field.
* ``${NAME:-default}`` is the value, or ``default`` when the variable is unset or empty.
* ``$$`` is a literal ``$``; any other ``$`` is left as it is.

The result is always a string: a reference cannot make a number or a boolean.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvironmentReferenceError(ValueError):
    """A ``${NAME}`` reference to a variable that is not set; the message names the field."""


def expand_environment(document: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """``document`` with every environment reference in its string values replaced.

    >>> expand_environment({"id": "sw-${POD}", "n": 3, "cost": "$$5"}, {"POD": "a-0"})
    {'id': 'sw-a-0', 'n': 3, 'cost': '$5'}
    """
    if isinstance(document, dict):
        return {key: expand_environment(value, environ, _join(path, str(key)))
                for key, value in document.items()}
    if isinstance(document, list):
        return [expand_environment(value, environ, f"{path}[{index}]")
                for index, value in enumerate(document)]
    if isinstance(document, str):
        return _REFERENCE.sub(lambda match: _value(match, environ, path), document)
    return document


def _value(match: re.Match[str], environ: Mapping[str, str], path: str) -> str:
    if match.group(0) == "$$":
        return "$"
    name, default = match.group(1), match.group(2)
    value = environ.get(name)
    if default is not None:
        return value if value else default
    if value is None:
        raise EnvironmentReferenceError(
            f"{path or 'config'}: environment variable {name} is not set (write "
            f"${{{name}:-default}} for a fallback, $$ for a literal $)")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
