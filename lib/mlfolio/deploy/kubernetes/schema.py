"""Documents checked against the Kubernetes OpenAPI schemas, errors in plain words.

``kubernetes_validate`` holds the schemas; its jsonschema errors become one line per field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from mlfolio.deploy import DeployError


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        raise DeployError(
            "kubernetes-validate is not installed: `pip install "
            "kubernetes-validate` (it holds the Kubernetes schemas the manifests "
            "are checked against offline)"
        ) from None
    return kubernetes_validate


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "<document>"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_problems(err: Any, prefix: list[Any]) -> list[str]:
    """Plain words for one jsonschema error: the field path, and what was expected."""
    path = [*prefix, *err.path]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extras = [key for key in err.instance if key not in allowed]
        return [f"{_dotted([*path, key])}: unknown field {key!r}" for key in extras]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [key for key in err.validator_value if key not in err.instance]
        return [f"{_dotted([*path, key])}: required field is missing" for key in missing]
    if err.validator == "type":
        expected = [
            t
            for t in (
                [err.validator_value]
                if isinstance(err.validator_value, str)
                else err.validator_value
            )
            if t != "null"
        ]
        return [
            f"{_dotted(path)}: expected {' or '.join(expected)}, got "
            f"{type(err.instance).__name__} {_short(err.instance)}"
        ]
    return [f"{_dotted(path)}: {err.message}"]


def _without_nulls(node: Any) -> Any:
    """The API server reads ``key: null`` as unset; so do the checks (required keys)."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node


def _schema_check(
    kv: Any, doc: dict[str, Any], version: str, prefix: list[Any], where: str
) -> list[str]:
    try:
        kv.validate(_without_nulls(doc), version, strict=True)
    except kv.ValidationError as err:
        return [f"{where}: {p}" for p in _schema_problems(err, prefix)]
    except kv.SchemaNotFoundError as err:
        return [
            f"{where}: no Kubernetes {err.version} schema for apiVersion "
            f"{doc.get('apiVersion')!r} kind {doc.get('kind')!r} (a removed API version, "
            "a typo, or a custom resource)"
        ]
    except kv.utils.VersionNotSupportedError:
        raise DeployError(
            f"kubernetes-validate {kv.__version__} has no schemas for Kubernetes {version}"
        ) from None
    return []
