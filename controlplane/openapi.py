"""Control plane OpenAPI: the 3.1 document built from the route registry's pydantic models.

Written by hand (about a hundred lines) because the aiohttp OpenAPI libraries emit 3.0 from
marshmallow or their own decorators; pydantic already produces JSON Schema 2020-12, which is
what OpenAPI 3.1 embeds.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from controlplane import idempotency
from controlplane.http import Api, ErrorBody, Route

_PARAM = re.compile(r"\{(\w+)\}")
_ERRORS = {
    "400": "Malformed request",
    "401": "Missing or invalid credentials",
    "403": "Not allowed for this principal",
    "404": "Not found in this tenant",
    "409": "Conflicts with current state",
    "413": "Body larger than the limit",
    "415": "Not JSON",
    "422": "Well-formed but invalid",
    "429": "Rate limited; see Retry-After",
}

_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": idempotency.HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes the request safe to repeat for 24 hours: a repeat by the same principal with the"
        " same key, method, path and body gets the first response again (with"
        f" {idempotency.REPLAYED_HEADER}: true) without running again; the same key with"
        " another request is 422 idempotency_key_reused, and one still running is 409"
        " idempotency_key_in_progress. 5xx and 429 responses are not kept."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "pattern": idempotency.KEY_PATTERN,
    },
}
_REPLAYED: dict[str, Any] = {
    "description": "true when this is the stored response of an earlier request with the key",
    "schema": {"type": "string", "enum": ["true"]},
}


def build_openapi(api: Api, *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing every registered route."""
    models: set[type[BaseModel]] = {ErrorBody}
    for route in api.routes:
        models.update(m for m in (route.body, route.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, schema = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    components = schema.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for route in api.routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "bootstrap": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _ref(refs: dict[Any, Any], model: type[BaseModel]) -> dict[str, Any]:
    return dict(refs[(model, "validation")])


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
            for name in _PARAM.findall(route.path)
        ],
    }
    if route.query is not None:
        qschema = route.query.model_json_schema()
        for name, prop in qschema.get("properties", {}).items():
            op["parameters"].append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in qschema.get("required", []),
                    "schema": {k: v for k, v in prop.items() if k != "title"},
                }
            )
    if route.idempotent:
        op["parameters"].append(_IDEMPOTENCY_KEY)
    if route.auth != "none":
        op["security"] = [{route.auth: []}]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(refs, route.body)}},
        }
    ok: dict[str, Any] = {"description": "Success"}
    if route.response is not None:
        ok["content"] = {route.content_type: {"schema": _ref(refs, route.response)}}
    elif route.content_type != "application/json":
        ok["content"] = {route.content_type: {"schema": {"type": "string"}}}
    status = (
        "204"
        if route.response is None and route.content_type == "application/json"
        else str(route.status)
    )
    if route.idempotent:
        ok["headers"] = {idempotency.REPLAYED_HEADER: _REPLAYED}
    responses: dict[str, Any] = {status: ok}
    error = {"content": {"application/json": {"schema": _ref(refs, ErrorBody)}}}
    for code, text in _ERRORS.items():
        responses[code] = {"description": text, **error}
    op["responses"] = responses
    return op
