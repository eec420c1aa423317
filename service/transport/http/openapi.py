"""The OpenAPI 3.1 document of the HTTP door, served at /openapi.json.

The component schemas are generated from the protobuf descriptors of sdedit.v1 (and the
messages they reach: google.rpc.Status, google.protobuf.Any, Timestamp), following the proto3
JSON mapping that google.protobuf.json_format speaks: lowerCamelCase names, 64-bit integers
as decimal strings, bytes as base64 strings, enums by name, Timestamps as RFC 3339 strings.
So they cannot drift from the proto. The paths come from the route table
(service/transport/http/routes.py), the one place the routes are declared.
"""

from __future__ import annotations

from importlib import metadata

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sdedit.v1 import sdedit_pb2
from service.transport.http.routes import ROUTES, Route

INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
UINT32 = {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}
_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
# Well-known types with a JSON form of their own (proto3 JSON mapping).
_WELL_KNOWN = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"],
                            "additionalProperties": True,
                            "description": "a message of the type its @type names, with its fields beside @type"},
}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(field: FieldDescriptor, schemas: dict) -> dict:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        item = _message_ref(field.message_type, schemas)
    elif field.type == FieldDescriptor.TYPE_ENUM:
        item = ref(_enum(field.enum_type, schemas))
    else:
        item = dict(_SCALARS[field.type])
    if field.is_repeated:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": _field_schema(field.message_type.fields_by_name["value"], schemas)}
        return {"type": "array", "items": item}
    return item


def _enum(enum, schemas: dict) -> str:
    if enum.full_name not in schemas:
        schemas[enum.full_name] = {"type": "string", "enum": [v.name for v in enum.values],
                                   "description": f"enum {enum.full_name}, by name"}
    return enum.full_name


def _message_ref(message: Descriptor, schemas: dict) -> dict:
    if message.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[message.full_name])
    if message.full_name not in schemas:
        schemas[message.full_name] = {}  # placeholder: recursive messages end here
        properties = {f.json_name: _field_schema(f, schemas) for f in message.fields}
        oneofs = [o for o in message.oneofs if not (len(o.fields) == 1 and o.fields[0].name.startswith("_"))]
        schema = {"type": "object", "properties": properties, "additionalProperties": False,
                  "description": f"message {message.full_name} (proto3 JSON mapping: every field optional; "
                                 "input also takes the proto field names)"}
        if oneofs:
            schema["description"] += "; at most one of " + "; ".join(
                ", ".join(f.json_name for f in o.fields) for o in oneofs)
        schemas[message.full_name] = schema
    return ref(message.full_name)


def component_schemas() -> dict:
    """Every message of sdedit.v1 (and what it reaches), plus the error and health answers."""
    schemas: dict = {}
    for message in sdedit_pb2.DESCRIPTOR.message_types_by_name.values():
        _message_ref(message, schemas)
    for enum in sdedit_pb2.DESCRIPTOR.enum_types_by_name.values():
        _enum(enum, schemas)
    schemas["Error"] = {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": "AIP-193: a google.rpc.Status with the HTTP code and the gRPC code's name",
        "properties": {"error": {"type": "object", "required": ["code", "status", "message"], "additionalProperties": False,
                                 "properties": {"code": {"type": "integer", "description": "the HTTP code"},
                                                "status": {"type": "string", "description": "the gRPC code's name"},
                                                "message": {"type": "string"},
                                                "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]}}}}}
    schemas["Health"] = {"type": "object", "required": ["status"], "additionalProperties": False,
                         "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]}}}
    return schemas


def _parameter(param) -> dict:
    return {"name": param.name, "in": param.where, "required": param.required, "schema": param.schema,
            "description": param.description}


ERROR_RESPONSE = {"description": "an error (docs/http.md): 400, 401, 403, 404, 405, 409, 413, 415, 429, 499, 500, "
                                 "503, 504", "content": {"application/json": {"schema": ref("Error")}}}


def _operation(route: Route) -> dict:
    operation: dict = {"operationId": route.handler, "summary": route.summary, "tags": list(route.tags)}
    if route.params:
        operation["parameters"] = [_parameter(p) for p in route.params]
    if route.request:
        content = {"application/json": {"schema": ref(route.request)}}
        if route.multipart:
            content["multipart/form-data"] = {
                "schema": {"type": "object", "additionalProperties": False, "properties": {
                    "request": {"type": "string", "contentMediaType": "application/json",
                                "description": f"{route.request} JSON (the images may be left out)"},
                    "image": {"type": "string", "contentMediaType": "application/octet-stream",
                              "description": "the guide (PNG, JPEG or NPY)"},
                    "mask": {"type": "string", "contentMediaType": "application/octet-stream",
                             "description": "the mask (white = regenerate)"}}},
                "encoding": {"request": {"contentType": "application/json"}}}
        operation["requestBody"] = {"required": False, "content": content}
    if route.media == "application/json":
        schema = ref(route.response) if route.response else {"type": "object"}
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    elif route.media == "text/event-stream":
        event = {"type": "object", "required": ["data"], "description": "one Server-Sent Event", "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{1,20}$", "description": "the event's sequence"},
            "event": {"type": "string", "enum": ["progress", "preview", "result", "error"]},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"oneOf": [ref(route.response), ref("Error")]}},
            "retry": {"type": "integer"}}}
        ok = {"description": f"Server-Sent Events, one per event: id (its sequence), event, data ({route.response} "
                             "JSON; event error: an Error); ends after result or error",
              "content": {"text/event-stream": {"schema": event}}}
    else:
        ok = {"description": "OK", "content": {route.media: {"schema": {"type": "string"}}}}
    responses = {"200": ok, "default": ERROR_RESPONSE}
    if route.handler == "healthz":
        responses["503"] = {"description": "NOT_SERVING", "content": {"application/json": {"schema": ref("Health")}}}
    operation["responses"] = responses
    if route.rpc:
        operation["security"] = [{"bearer": []}, {}]
    return operation


def openapi_document() -> dict:
    paths: dict = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    try:
        version = metadata.version("sdedit-service")
    except metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "SDEdit image editing (HTTP/JSON door)", "version": version,
                 "description": "The sdedit.v1 gRPC API as REST + JSON (docs/http.md). Bodies are the proto3 JSON "
                                "mapping of the messages; errors are google.rpc.Status as AIP-193 JSON."},
        "paths": paths,
        "components": {"schemas": component_schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a token of --auth-tokens-file (when it is set)"}}},
    }
