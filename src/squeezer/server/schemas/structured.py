"""The structured-output fields of every dialect, each turned into one ``Constraint``.

OpenAI's ``response_format`` (``json_object``, ``json_schema``), the shapes TGI's chat
route also takes (``{"type": "json" | "regex", "value": ...}``), vLLM's
``structured_outputs`` object and its older ``guided_*`` fields, and TGI's
``grammar`` parameter. A request names at most one constraint; the text of each is
checked before anything is queued, so a bad schema or regex is a 4xx naming its field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from squeezer.backends.constraints import Constraint
from squeezer.errors import InvalidRequestError


def schema_text(value: Any, field: str) -> str:
    """A JSON schema given as an object or as JSON text."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, str):
        try:
            if isinstance(json.loads(value), dict):
                return value
        except json.JSONDecodeError:
            pass
    raise InvalidRequestError(f"{field}: a JSON schema (an object) is required", param=field)


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    #: OpenAI's strict mode: the output always follows the schema. squeezer always
    #: enforces it, strict or not (as vLLM does).
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format`` as OpenAI, vLLM and TGI's chat route take it."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "json", "regex"]
    json_schema: JsonSchemaFormat | None = None
    #: TGI's: the schema (``json``, ``json_schema``), or the regex (``regex``).
    value: Any = None

    def constraint(self) -> Constraint | None:
        field = "response_format"
        if self.type == "text":
            return None
        if self.type == "json_object":
            schema = self.value if self.value is not None else {"type": "object"}
            return Constraint("json_schema", schema_text(schema, field))
        if self.type == "regex":
            if not isinstance(self.value, str):
                raise InvalidRequestError(f"{field}: a regex 'value' is required", param=field)
            return Constraint("regex", self.value)
        if self.type == "json_schema" and self.json_schema is not None:
            if self.json_schema.schema_ is None:
                raise InvalidRequestError(f"{field}: json_schema.schema is required", param=field)
            return Constraint("json_schema", json.dumps(self.json_schema.schema_))
        value = self.value
        if isinstance(value, dict) and "schema" in value and self.type == "json_schema":
            value = value["schema"]  # TGI's json_schema: {"name", "schema"} in 'value'
        if value is None:
            raise InvalidRequestError(f"{field}: a JSON schema is required", param=field)
        return Constraint("json_schema", schema_text(value, field))


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its constraints."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def constraint(self) -> Constraint | None:
        field = "structured_outputs"
        found = {
            "json": None
            if self.json_ is None
            else Constraint("json_schema", schema_text(self.json_, field)),
            "regex": None if self.regex is None else Constraint("regex", self.regex),
            "choice": None if self.choice is None else Constraint.choice(self.choice),
            "grammar": None if self.grammar is None else Constraint("grammar", self.grammar),
            "json_object": Constraint.json_schema({"type": "object"}) if self.json_object else None,
        }
        return one_constraint({f"{field}.{k}": v for k, v in found.items()}, check=False)


class TgiGrammar(BaseModel):
    """TGI's ``grammar`` parameter."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json", "regex", "json_schema"]
    value: Any

    def constraint(self) -> Constraint:
        if self.type == "regex":
            if not isinstance(self.value, str):
                raise InvalidRequestError("grammar: a regex 'value' is required", param="grammar")
            return Constraint("regex", self.value)
        value = self.value
        if self.type == "json_schema" and isinstance(value, dict) and "schema" in value:
            value = value["schema"]
        return Constraint("json_schema", schema_text(value, "grammar"))


def one_constraint(named: dict[str, Constraint | None], *, check: bool = True) -> Constraint | None:
    """The one constraint a request gives (by field name), checked (``check``); a 400
    naming the fields when it gives several, or the field whose text cannot compile."""
    given = {field: c for field, c in named.items() if c is not None}
    if len(given) > 1:
        fields = ", ".join(given)
        raise InvalidRequestError(
            f"give one structured-output constraint, not several: {fields}",
            param=next(iter(given)).split(".")[0],
        )
    if not given:
        return None
    ((field, constraint),) = given.items()
    if not check:
        return constraint
    try:
        constraint.check()
    except ValueError as e:
        raise InvalidRequestError(f"{field}: {e}", param=field.split(".")[0]) from None
    return constraint
