"""Render a model's chat template: untrusted Jinja, so in a sandbox with limits.

The template comes from the GGUF file. It is rendered by jinja2's
ImmutableSandboxedEnvironment (no access to Python internals, no mutation of
our objects), with bounds on output size, repetition sizes and render time; the time
bound is checked inside every loop and call, so work that writes nothing is bounded too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from gptcli.errors import GptcliError

MAX_OUTPUT_CHARS = 1_000_000
MAX_SECONDS = 2.0
MAX_REPEAT = 100_000  # largest string or list built by `*` in a template

PLAIN_NOTICE = "this model has no chat template; using a plain 'User:/Assistant:' format"


class TemplateError(GptcliError):
    pass


@dataclass(frozen=True)
class ChatFormat:
    """How to turn messages into the model's prompt text."""

    template: str | None  # None: the plain fallback format
    bos_token: str = ""
    eos_token: str = ""

    @property
    def stops(self) -> tuple[str, ...]:
        # The plain format has no end-of-turn token: stop where the next turn of either
        # speaker would start (a base model runs on into an invented "Assistant:" too).
        return () if self.template else ("\nUser:", "\nAssistant:")

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            return render_plain(messages, add_generation_prompt)
        return render_template(
            self.template,
            messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt,
        )


def render_plain(messages: list[dict], add_generation_prompt: bool = True) -> str:
    parts = []
    for m in messages:
        role = m["role"]
        if role == "system":
            parts.append(f"{m['content']}\n\n")
        else:
            label = "User" if role == "user" else "Assistant"
            parts.append(f"{label}: {m['content']}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return "".join(parts)


def _environment(deadline: float):
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def check_time() -> None:
        if time.monotonic() > deadline:
            raise TemplateError("the model's chat template took too long to render; refused")

    def guarded(iterable):
        # Every loop iteration checks the deadline: loops that write nothing cost time too.
        for item in iterable:
            check_time()
            yield item

    class _Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])
        gptcli_guard = staticmethod(guarded)

        def _parse(self, source, name, filename):
            # Wrap every `for` loop's iterable in guarded(); an environment attribute, so a
            # template cannot shadow it with a variable of its own.
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                guard = nodes.EnvironmentAttribute("gptcli_guard")
                loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
            return tree

        def call(self, __context, __obj, *args, **kwargs):
            check_time()  # macros and functions called in a loop, recursion with fan-out
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            check_time()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            check_time()
            return super().getitem(obj, argument)

        def call_binop(self, context, operator, left, right):
            check_time()
            # Bounds of our own, named in the refusal (not jinja's "Python internals").
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise TemplateError(
                    f"the model's chat template raises to a power over 64 ({right}); refused"
                )
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        if len(seq) * n > MAX_REPEAT:
                            raise TemplateError(
                                "the model's chat template repeats a text or list to over "
                                f"{MAX_REPEAT:,} items; refused"
                            )
            return super().call_binop(context, operator, left, right)

    env = _Env(trim_blocks=True, lstrip_blocks=True, autoescape=False)

    def raise_exception(message: str):
        raise TemplateError(f"the chat template refused the conversation: {message}")

    def strftime_now(fmt: str) -> str:
        return time.strftime(str(fmt))

    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    return env


def render_template(
    template: str,
    messages: list[dict],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render `template` for `messages`; raise TemplateError if it is invalid or unsafe."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    try:
        deadline = time.monotonic() + MAX_SECONDS
        compiled = _environment(deadline).from_string(template)
        out: list[str] = []
        size = 0
        for chunk in compiled.generate(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        ):
            out.append(chunk)
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateError("the model's chat template produced too much output; refused")
        return "".join(out)
    except TemplateError:
        raise
    except SecurityError:
        raise TemplateError(
            "the model's chat template tried to reach Python internals; refused "
            "(the file may be malicious)"
        ) from None
    except JinjaError as e:
        raise TemplateError(f"the model's chat template is invalid: {e}") from None
    except OverflowError as e:
        # jinja's sandbox refuses range() over MAX_RANGE items with OverflowError.
        raise TemplateError(f"the model's chat template asked for too much: {e}") from None
    except RecursionError:
        raise TemplateError("the model's chat template recursed too deeply; refused") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise TemplateError(f"the model's chat template failed: {e}") from None
