"""Structured output: --json-schema, --format json and --grammar turned into one GBNF
grammar (llama.cpp's grammar format), checked before anything is generated.

Nothing here needs a model: the grammar is bound to a vocabulary later
(`Constraint.grammar(engine)`), and a server gets the schema or the grammar as is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gptcli.errors import GptcliError, UsageError
from gptcli.limits import (
    MAX_GRAMMAR_BYTES,
    MAX_GRAMMAR_EMPTY_REPEATS,
    MAX_GRAMMAR_NESTING,
    MAX_GRAMMAR_REPEAT,
    MAX_GRAMMAR_RULES,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_COUNT,
    MAX_SCHEMA_SPAN,
)
from gptcli.untrusted import JsonTooDeep, loads, read_input, size_text

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
        from gptcli.llama.grammar import Grammar

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
        text = _read_text(grammar, "--grammar", "grammar file", MAX_GRAMMAR_BYTES)
        check_gbnf(text, "--grammar")
        return Constraint("grammar", text)
    return None


def _read_text(path: str, option: str, what: str, limit: int) -> str:
    data = read_input(path, limit, f"{option}: ")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{option}: {what} {path} is not UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise UsageError(f"{option}: {what} {path} is empty")
    return text


# -- grammars: checked before llama.cpp's parser sees them ---------------------------
# That parser takes x{5,2} as about 2**64 optional copies (memory grows until the kernel
# steps in), reads a bound above 2000 as no bound at all, and recurses once per nested
# group and per leftmost rule reference: the bounds in gptcli.limits keep it safe.

_REPEAT = re.compile(r"\{[ \t]*([0-9]+)[ \t]*(?:(,)[ \t]*([0-9]*)[ \t]*)?\}")
# What the check looks at; comments, literals and character classes are skipped whole
# (escapes included), so a "(" or "{" inside them is text.
_GBNF_PARTS = re.compile(r'#[^\n]*|"(?:[^"\\]|\\.)*"?|\[(?:[^\]\\]|\\.)*\]?|[()]|::=|\{[^}]*\}?')


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def check_gbnf(gbnf: str, option: str) -> None:
    """UsageError naming the first thing in a GBNF grammar that would make llama.cpp's
    parser exhaust memory or the stack, or silently change its meaning."""
    if len(gbnf.encode("utf-8", errors="surrogatepass")) > MAX_GRAMMAR_BYTES:
        raise UsageError(f"{option}: the grammar is larger than {size_text(MAX_GRAMMAR_BYTES)}")
    depth = rules = 0
    for part in _GBNF_PARTS.finditer(gbnf):
        c = part.group(0)[0]
        if c == "(":
            depth += 1
            if depth > MAX_GRAMMAR_NESTING:
                raise UsageError(
                    f"{option}: parentheses nest more than {MAX_GRAMMAR_NESTING} deep "
                    f"(line {_line_of(gbnf, part.start())})"
                )
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == ":":
            rules += 1
            if rules > MAX_GRAMMAR_RULES:
                raise UsageError(
                    f"{option}: the grammar defines more than {MAX_GRAMMAR_RULES} rules"
                )
        elif c == "{" and (m := _REPEAT.match(gbnf, part.start())):
            _check_repeat(m, gbnf, option)
    _check_empty_repeats(gbnf, option)


def _check_repeat(m: re.Match, gbnf: str, option: str) -> None:
    lo, comma, hi = m.group(1), m.group(2), m.group(3)
    where = f"{m.group(0)} (line {_line_of(gbnf, m.start())})"
    for digits in (lo, hi):
        if digits and (len(digits) > 9 or int(digits) > MAX_GRAMMAR_REPEAT):
            raise UsageError(
                f"{option}: repetition {where} is above the limit of {MAX_GRAMMAR_REPEAT} "
                "(use * or + for no bound)"
            )
    if comma and hi and int(hi) < int(lo):
        raise UsageError(f"{option}: repetition {where} has its minimum above its maximum")


# Enough of GBNF to know what can match nothing: comments, literals, classes, token
# references (<...>, !<...>), names, `::=`, `|`, parentheses, postfix operators and `.`.
_GBNF_TOKENS = re.compile(
    r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|!?<[^>]*>|[A-Za-z0-9_-]+|::=|\{[^}]*\}|.',
    re.S,
)


def _grammar_rules(gbnf: str) -> dict[str, list[list[list]]]:
    """Rules as alternatives of elements [atom, lo, hi]; an atom is "empty", "term" or a
    rule name; each parenthesised group becomes a rule of its own. Built without
    recursion: nesting is bounded by MAX_GRAMMAR_NESTING, not by Python's stack."""
    toks = [t for t in _GBNF_TOKENS.findall(gbnf) if t.strip() and not t.startswith("#")]
    rules: dict[str, list[list[list]]] = {}
    groups = 0
    stack: list[tuple[str, list[list[list]]]] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if i + 1 < len(toks) and toks[i + 1] == "::=" and t[0] not in '"[(<!{':
            while stack:  # an unclosed group: llama.cpp refuses it; close it here
                name, alts = stack.pop()
                rules[name] = alts
            stack = [(t, [[]])]
            i += 2
            continue
        i += 1
        if not stack:
            continue
        seq = stack[-1][1][-1]
        if t == "(":
            groups += 1
            stack.append((f"({groups})", [[]]))
        elif t == ")" and len(stack) > 1:
            name, alts = stack.pop()
            rules[name] = alts
            stack[-1][1][-1].append([name, 1, 1])
        elif t == "|":
            stack[-1][1].append([])
        elif t in ("*", "+", "?") or t[0] == "{":
            if not seq:
                continue
            if seq[-1][1:] != [1, 1]:  # x?* : the inner repetition becomes its own rule
                groups += 1
                rules[f"({groups})"] = [[seq[-1]]]
                seq[-1] = [f"({groups})", 1, 1]
            m = _REPEAT.fullmatch(t) if t[0] == "{" else None
            if t == "*":
                seq[-1][1:] = [0, None]
            elif t == "+":
                seq[-1][1:] = [1, None]
            elif t == "?":
                seq[-1][1:] = [0, 1]
            elif m:
                lo = int(m.group(1))
                hi = lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
                seq[-1][1:] = [lo, hi]
        elif t == '""':
            seq.append(["empty", 1, 1])
        elif t[0].isalnum() or t[0] in "_-":
            seq.append([t, 1, 1])
        else:
            seq.append(["term", 1, 1])
    while stack:
        name, alts = stack.pop()
        rules[name] = alts
    return rules


def _check_empty_repeats(gbnf: str, option: str) -> None:
    """UsageError when the grammar repeats, more than MAX_GRAMMAR_EMPTY_REPEATS times in
    all, something that can match nothing (llama.cpp's setup then takes minutes)."""
    rules = _grammar_rules(gbnf)
    users: dict[str, set[str]] = {}  # rule -> the rules whose alternatives name it
    for name, alts in rules.items():
        for seq in alts:
            for atom, _, _ in seq:
                users.setdefault(atom, set()).add(name)
    nullable: dict[str, bool] = dict.fromkeys(rules, False)
    count: dict[str, int] = dict.fromkeys(rules, 1)  # copies of nullable things walked
    cap = MAX_GRAMMAR_EMPTY_REPEATS + 1

    def atom_nullable(atom: str) -> bool:
        return atom == "empty" or nullable.get(atom, False)

    # Worklists, so a chain of thousands of rules costs one visit per change: a rule
    # turns nullable once, and its count only grows, up to the cap.
    todo = list(rules)
    while todo:
        name = todo.pop()
        if not nullable[name] and any(
            all(lo == 0 or atom_nullable(atom) for atom, lo, _ in seq) for seq in rules[name]
        ):
            nullable[name] = True
            todo.extend(users.get(name, ()))
    todo = list(rules)
    while todo:
        name = todo.pop()
        best = 1
        for seq in rules[name]:
            total = 0
            for atom, lo, hi in seq:
                c = count.get(atom, 1)
                bound = hi if hi is not None else max(lo, 1)
                if atom_nullable(atom) and bound > 1:
                    c *= bound
                if c > 1:
                    total += c
            best = max(best, min(total, cap))
        if best > count[name]:
            count[name] = best
            todo.extend(users.get(name, ()))
    worst = max(count, key=count.get, default=None)
    if worst is not None and count[worst] > MAX_GRAMMAR_EMPTY_REPEATS:
        where = f"rule {worst}" if not worst.startswith("(") else "a group"
        raise UsageError(
            f"{option}: {where} repeats something that can match nothing more than "
            f"{MAX_GRAMMAR_EMPTY_REPEATS} times (llama.cpp would take minutes to set it up); "
            "make the repeated part match at least one character"
        )


# -- JSON Schemas -----------------------------------------------------------------------


def load_schema(arg: str) -> object:
    """--json-schema's value: inline JSON (starting with `{`) or a file holding it."""
    if arg.lstrip().startswith("{"):
        text = arg
        if len(arg.encode("utf-8", errors="surrogatepass")) > MAX_SCHEMA_BYTES:
            raise UsageError(f"--json-schema is larger than {size_text(MAX_SCHEMA_BYTES)}")
    else:
        text = _read_text(arg, "--json-schema", "schema", MAX_SCHEMA_BYTES)
    try:
        schema = loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(
            f"--json-schema is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except JsonTooDeep as e:
        raise UsageError(f"--json-schema is {e}") from None
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


_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_PAIRS = (("minLength", "maxLength", "string"), ("minItems", "maxItems", "array"))


def _subschemas(schema: dict, where: str):
    """(pointer, subschema) for every schema directly inside `schema`."""
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield f"{where}/{key}/{name}", sub
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield f"{where}/{key}", schema[key]
    for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield f"{where}/{key}/{i}", sub


def schema_contradiction(schema: object, where: str = "") -> str | None:
    """Where a schema asks for what no value can be, or for bounds no grammar can hold
    (a negative or huge length, minLength above maxLength, an empty enum), in words;
    None when there is nothing such. Checked before conversion: the converter would
    otherwise write a grammar that fails (or takes all memory) for reasons the user
    never wrote."""
    if not isinstance(schema, dict):
        return None
    at = where or "/"
    for key in _COUNTS:
        if key in schema:
            v = schema[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SCHEMA_COUNT:
                return (
                    f"{where}/{key} is {json.dumps(v)}: "
                    f"it must be a whole number from 0 to {MAX_SCHEMA_COUNT}"
                )
    for lo, hi, kind in _PAIRS:
        if lo in schema and hi in schema and schema[lo] > schema[hi]:
            return f"{at}: {lo} {schema[lo]} is above {hi} {schema[hi]}, so no {kind} can match"
        if hi in schema and schema[hi] - schema.get(lo, 0) > MAX_SCHEMA_SPAN:
            return (
                f"{at}: {hi} {schema[hi]} is more than {MAX_SCHEMA_SPAN} above {lo} "
                f"{schema.get(lo, 0)}: more optional {kind} parts than llama.cpp takes"
            )
    for lo, hi in (("minimum", "maximum"), ("exclusiveMinimum", "exclusiveMaximum")):
        a, b = schema.get(lo), schema.get(hi)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > b:
            return f"{at}: {lo} {a} is above {hi} {b}, so no number can match"
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        return f"{where}/enum is {json.dumps(schema['enum'])}: an enum needs at least one value"
    for key in ("anyOf", "oneOf"):
        if key in schema and (not isinstance(schema[key], list) or not schema[key]):
            return f"{where}/{key} is {json.dumps(schema[key])}: it needs at least one schema"
    if schema.get("type") == []:
        return f"{where}/type is []: no value has no type"
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            return f"{where}/required must be a list of property names"
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        if schema.get("additionalProperties") is False:
            missing = [r for r in required if r not in props]
            if missing:
                return (
                    f"{at}: {missing[0]!r} is required but is not a property and no "
                    "additional properties are allowed, so no object can match"
                )
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for m in _REPEAT.finditer(pattern):
            lo, comma, hi = m.group(1), m.group(2), m.group(3)
            for digits in (lo, hi):
                if digits and (len(digits) > 9 or int(digits) > MAX_SCHEMA_COUNT):
                    return (
                        f"{where}/pattern repeats {m.group(0)}: "
                        f"above the limit of {MAX_SCHEMA_COUNT}"
                    )
            if comma and hi and int(hi) < int(lo):
                return f"{where}/pattern repeats {m.group(0)}: its minimum is above its maximum"
            if comma and hi and int(hi) - int(lo) > MAX_SCHEMA_SPAN:
                return (
                    f"{where}/pattern repeats {m.group(0)}: more than {MAX_SCHEMA_SPAN} "
                    "optional repetitions"
                )
    for sub_where, sub in _subschemas(schema, where):
        found = schema_contradiction(sub, sub_where)
        if found:
            return found
    return None


def from_schema(arg: str) -> Constraint:
    """A JSON Schema (inline or a file) as a grammar, via llama-cpp-python's converter."""
    schema = load_schema(arg)
    contradiction = schema_contradiction(schema)
    if contradiction:
        raise UsageError(f"--json-schema: {contradiction}")
    bad = unsupported_keywords(schema)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UsageError(
            "--json-schema uses what the grammar converter does not support: "
            + ", ".join(bad[:3])
            + more
        )
    from gptcli.llama.grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UsageError(f"--json-schema cannot be converted to a grammar: {reason}") from None
    check_gbnf(gbnf, "--json-schema (as a grammar)")  # what the limits above leave over
    return Constraint("json-schema", gbnf, schema)


def _what(constraint: Constraint) -> str:
    return "JSON document" if constraint.is_json else "text the grammar describes"


def _limit(max_tokens: int | None) -> str:
    return f"-n {max_tokens}" if max_tokens is not None else "the context"


def check_complete(finish, constraint: Constraint, max_tokens: int | None) -> None:
    """Exit 1 (after the partial text, already printed) when the output stopped before
    its document was whole: scripts notice, nothing is lost."""
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
