"""Structured output: --json-schema, --format json and --grammar turned into one GBNF
grammar (llama.cpp's grammar format), checked before anything is generated.

Nothing here needs a model: the grammar is bound to a vocabulary later
(`Constraint.grammar(engine)`), and a server gets the schema or the grammar as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import UsageError

# Any JSON value, whitespace as llama.cpp's json.gbnf allows it (bounded, so a model
# cannot pad forever). Strings hold no raw control characters, so a newline is always
# whitespace between tokens: --each-line may turn it into a space.
JSON_GBNF = r"""
root   ::= value
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= "-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""

# What llama-cpp-python's converter turns into grammar rules. Any other keyword that
# constrains a value (minimum, not, uniqueItems, ...) it ignores silently, so the output
# could break the schema: refused instead.
_SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "oneOf", "anyOf", "allOf", "$ref",
    "pattern", "format", "minLength", "maxLength",
}  # fmt: skip
_ANNOTATIONS = {
    "$schema", "$id", "$defs", "definitions", "$comment", "title", "description",
    "default", "examples", "readOnly", "writeOnly", "deprecated", "contentMediaType",
    "contentEncoding",
}  # fmt: skip
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


@dataclass(frozen=True)
class Constraint:
    """A grammar the output must match, and where it came from."""

    kind: str  # "json-schema", "json" or "grammar"
    gbnf: str
    schema: object | None = None  # the parsed JSON Schema (kind "json-schema")

    @property
    def is_json(self) -> bool:
        """The output is one JSON document (a newline in it is only whitespace)."""
        return self.kind in ("json-schema", "json")

    @property
    def option(self) -> str:
        return {"json-schema": "--json-schema", "json": "--format json"}.get(self.kind, "--grammar")

    def grammar(self, engine):
        """The grammar bound to `engine`'s vocabulary (UsageError if it cannot start)."""
        from gptcli.engine import Grammar

        return Grammar(engine, self.gbnf)


def from_options(
    json_schema: str | None, output_format: str | None, grammar: str | None
) -> Constraint | None:
    """The one constraint the options ask for, or None; UsageError for bad input."""
    given = [
        name
        for name, value in (
            ("--json-schema", json_schema),
            ("--format", output_format),
            ("--grammar", grammar),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError(f"give one of --json-schema, --format json, --grammar (got {given})")
    if json_schema is not None:
        return from_schema(json_schema)
    if output_format is not None:
        if output_format.strip().lower() != "json":
            raise UsageError(f"--format takes json, got {output_format!r}")
        return Constraint("json", JSON_GBNF)
    if grammar is not None:
        return Constraint("grammar", _read_text(grammar, "--grammar", "grammar file"))
    return None


def _read_text(path: str, option: str, what: str) -> str:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{option}: no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{option}: {path} is a directory") from None
    except OSError as e:
        raise UsageError(f"{option}: cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{option}: {what} {path} is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise UsageError(f"{option}: {what} {path} is empty")
    return text


def load_schema(arg: str) -> object:
    """--json-schema's value: inline JSON (starting with `{`) or a file holding it."""
    text = arg if arg.lstrip().startswith("{") else _read_text(arg, "--json-schema", "schema")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"--json-schema is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    if not isinstance(schema, dict):
        raise UsageError("--json-schema must be a JSON object (a JSON Schema)")
    return schema


def unsupported_keywords(schema: object, where: str = "") -> list[str]:
    """Places (JSON pointers) of schema keywords the converter would silently ignore."""
    found: list[str] = []
    if isinstance(schema, bool):
        return found
    if not isinstance(schema, dict):
        return [f"{where or '/'} (not a schema)"]
    for key, value in schema.items():
        at = f"{where}/{key}"
        if key not in _SUPPORTED and key not in _ANNOTATIONS:
            found.append(at)
        elif key == "type":
            names = value if isinstance(value, list) else [value]
            found += [f"{at} ({t!r})" for t in names if t not in _TYPES]
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                found += unsupported_keywords(sub, f"{at}/{name}")
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            found += unsupported_keywords(value, at)
        elif key in ("items", "prefixItems", "anyOf", "oneOf", "allOf") and isinstance(value, list):
            for i, sub in enumerate(value):
                found += unsupported_keywords(sub, f"{at}/{i}")
    return found


def from_schema(arg: str) -> Constraint:
    """A JSON Schema (inline or a file) as a grammar, via llama-cpp-python's converter."""
    schema = load_schema(arg)
    bad = unsupported_keywords(schema)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UsageError(
            "--json-schema uses what the grammar converter does not support: "
            + ", ".join(bad[:3])
            + more
        )
    from gptcli.engine import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UsageError(f"--json-schema cannot be converted to a grammar: {reason}") from None
    return Constraint("json-schema", gbnf, schema)


def _what(constraint: Constraint) -> str:
    return "JSON document" if constraint.is_json else "text the grammar describes"


def _limit(max_tokens: int | None) -> str:
    return f"-n {max_tokens}" if max_tokens is not None else "the context"


def check_complete(finish, constraint: Constraint, max_tokens: int | None) -> None:
    """Exit 1 (after the partial text, already printed) when the output stopped before
    its document was whole: scripts notice, nothing is lost."""
    from gptcli.errors import GptcliError

    if finish is None:
        return
    complete = finish.complete
    if complete is None:  # a server: only its finish reason tells
        complete = finish.reason not in ("length", "context")
    if not complete:
        raise GptcliError(
            f"stopped at {_limit(max_tokens)} before the {_what(constraint)} was complete: "
            "the output above is partial (raise -n)"
        )


def one_document_per_line(texts, constraint: Constraint, max_tokens: int | None):
    """--each-line outputs under a constraint: a JSON document's line breaks (whitespace
    only: JSON strings hold none raw) become spaces, so the result is JSON Lines; a
    document cut short makes the run end with exit 1 once every line is out."""
    from gptcli.errors import GptcliError

    partial = total = 0
    for text in texts:
        total += 1
        if constraint.is_json and text.strip():
            text = text.strip().replace("\r", " ").replace("\n", " ")
            try:
                json.loads(text)
            except ValueError:
                partial += 1
        yield text
    if partial:
        raise GptcliError(
            f"{partial} of {total} lines stopped at {_limit(max_tokens)} before the "
            f"{_what(constraint)} was complete (raise -n)"
        )


def server_fields(constraint: Constraint, dialect_name: str) -> dict:
    """The request fields that carry the constraint to a server, in the form it takes:
    llama-server `json_schema`/`grammar`, Ollama `format`, else OpenAI's
    `response_format` (JSON only). UsageError for a grammar such a server cannot take."""
    if dialect_name == "llama.cpp's llama-server":
        if constraint.kind == "json-schema":
            return {"json_schema": constraint.schema}
        return {"grammar": constraint.gbnf}
    if dialect_name == "Ollama":
        if constraint.kind == "grammar":
            raise UsageError("Ollama takes no GBNF grammar: use --json-schema or --format json")
        return {"format": constraint.schema if constraint.kind == "json-schema" else "json"}
    if constraint.kind == "grammar":
        raise UsageError(
            f"{dialect_name} takes no GBNF grammar (llama-server does): "
            "use --json-schema or --format json"
        )
    if constraint.kind == "json-schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": constraint.schema, "strict": True},
            }
        }
    return {"response_format": {"type": "json_object"}}
