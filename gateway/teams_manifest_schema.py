"""The Teams app manifest schema, version 1.22: the subset goodbot's package uses (gateway).

Not the published ``MicrosoftTeams.schema.json``: it cannot be downloaded here, and no Python
package ships it. This is written by hand from Microsoft's reference documentation (the "App
manifest" page for v1.22 and the ``root.bots.commandLists`` pages of the Microsoft 365 app
manifest reference), JSON Schema draft-04 like the original, and covers every property goodbot
writes with the constraints the documentation gives: required fields, lengths, patterns, enums
and array limits. Top-level properties goodbot does not write are refused
(``additionalProperties: false``), so a manifest that validates here uses nothing this subset
has not checked. Where versions of the reference differ, the stricter limit is kept (command
titles of 32 characters, 10 commands per list).
"""

from __future__ import annotations

from typing import Any, Final

MANIFEST_VERSION: Final = "1.22"

_GUID: Final = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_SEMVER: Final = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$"
_BOT_SCOPES: Final = ["team", "personal", "groupChat", "copilot"]

SCHEMA: Final[dict[str, Any]] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "additionalProperties": False,
    "definitions": {
        "guid": {"type": "string", "pattern": _GUID},
        "httpsUrl": {"type": "string", "maxLength": 2048, "pattern": "^[Hh][Tt][Tt][Pp][Ss]://"},
        "relativePath": {"type": "string", "maxLength": 2048, "pattern": "^[^/\\\\:]+$"},
        "hexColor": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"},
        "botScopes": {
            "type": "array",
            "maxItems": 3,
            "uniqueItems": True,
            "items": {"enum": _BOT_SCOPES},
        },
    },
    "properties": {
        "$schema": {"type": "string", "format": "uri"},
        "manifestVersion": {"type": "string", "enum": [MANIFEST_VERSION]},
        "version": {"type": "string", "maxLength": 256, "pattern": _SEMVER},
        "id": {"$ref": "#/definitions/guid"},
        "developer": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 32},
                "mpnId": {"type": "string", "maxLength": 10},
                "websiteUrl": {"$ref": "#/definitions/httpsUrl"},
                "privacyUrl": {"$ref": "#/definitions/httpsUrl"},
                "termsOfUseUrl": {"$ref": "#/definitions/httpsUrl"},
            },
            "required": ["name", "websiteUrl", "privacyUrl", "termsOfUseUrl"],
        },
        "name": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "short": {"type": "string", "minLength": 1, "maxLength": 30},
                "full": {"type": "string", "maxLength": 100},
            },
            "required": ["short"],
        },
        "description": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "short": {"type": "string", "minLength": 1, "maxLength": 80},
                "full": {"type": "string", "minLength": 1, "maxLength": 4000},
            },
            "required": ["short", "full"],
        },
        "icons": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "outline": {"$ref": "#/definitions/relativePath"},
                "color": {"$ref": "#/definitions/relativePath"},
            },
            "required": ["outline", "color"],
        },
        "accentColor": {"$ref": "#/definitions/hexColor"},
        "bots": {
            "type": "array",
            "maxItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "botId": {"$ref": "#/definitions/guid"},
                    "needsChannelSelector": {"type": "boolean"},
                    "isNotificationOnly": {"type": "boolean"},
                    "supportsCalling": {"type": "boolean"},
                    "supportsVideo": {"type": "boolean"},
                    "supportsFiles": {"type": "boolean"},
                    "scopes": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 3,
                        "uniqueItems": True,
                        "items": {"enum": _BOT_SCOPES},
                    },
                    "commandLists": {
                        "type": "array",
                        "maxItems": 3,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "scopes": {"$ref": "#/definitions/botScopes"},
                                "commands": {
                                    "type": "array",
                                    "maxItems": 10,
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "title": {"type": "string", "maxLength": 32},
                                            "description": {"type": "string", "maxLength": 128},
                                        },
                                        "required": ["title", "description"],
                                    },
                                },
                            },
                            "required": ["scopes", "commands"],
                        },
                    },
                },
                "required": ["botId", "scopes"],
            },
        },
        "permissions": {
            "type": "array",
            "uniqueItems": True,
            "items": {"enum": ["identity", "messageTeamMembers"]},
        },
        "validDomains": {
            "type": "array",
            "maxItems": 16,
            "uniqueItems": True,
            "items": {"type": "string", "maxLength": 2048, "pattern": "^[^/:\\s]+$"},
        },
        "webApplicationInfo": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "id": {"$ref": "#/definitions/guid"},
                "resource": {"type": "string", "maxLength": 2048},
            },
            "required": ["id"],
        },
    },
    "required": [
        "manifestVersion",
        "version",
        "id",
        "developer",
        "name",
        "description",
        "icons",
        "accentColor",
    ],
}
"""The subset, as a draft-04 schema (``jsonschema.Draft4Validator``)."""
