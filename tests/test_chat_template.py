"""The chat-template sandbox: exact output for honest templates, every bound tested at
its edge (one step inside passes, one step outside is refused), and hostile templates
refused through the CLI in one line. Expected prompts are written out by hand."""

from __future__ import annotations

import time

import pytest
from support.tinymodel import TINY_CHAT_TEMPLATE

from gptcli.llama import template as chat_template
from gptcli.llama.template import (
    MAX_OUTPUT_CHARS,
    MAX_REPEAT,
    MAX_SECONDS,
    ChatFormat,
    TemplateError,
    render_plain,
    render_template,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


def refusal(template: str, messages=CONVERSATION) -> str:
    with pytest.raises(TemplateError) as e:
        render_template(template, messages)
    return str(e.value)


# -- honest templates render exactly ----------------------------------------------------


def test_chatml_template_renders_exactly():
    assert render_template(TINY_CHAT_TEMPLATE, CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = render_template(TINY_CHAT_TEMPLATE, CONVERSATION, add_generation_prompt=False)
    assert without.endswith("Bye<|im_end|>\n")


def test_loop_variables_tokens_and_helpers_work_inside_the_sandbox():
    template = (
        "{{ bos_token }}{% for m in messages if m.role != 'system' %}"
        "{{ loop.index }}/{{ loop.length }}:{{ m['content'] }}{% if not loop.last %},{% endif %}"
        "{% endfor %}{{ eos_token }}|{{ {'k': 'é'} | tojson }}|{{ strftime_now('%Y') | length }}"
    )
    out = render_template(template, CONVERSATION, bos_token="<s>", eos_token="</s>")
    assert out == '<s>1/3:Hi,2/3:Hello!,3/3:Bye</s>|{"k": "é"}|4'


def test_raise_exception_names_the_templates_reason():
    msg = refusal("{{ raise_exception('roles must alternate') }}")
    assert msg == "the chat template refused the conversation: roles must alternate"


def test_plain_format_and_its_stop():
    assert (
        render_plain(CONVERSATION)
        == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:"
    )
    assert render_plain(CONVERSATION[:2], add_generation_prompt=False) == "Be brief.\n\nUser: Hi\n"
    assert ChatFormat(None).stops == ("\nUser:", "\nAssistant:")
    assert ChatFormat(None).render(CONVERSATION) == render_plain(CONVERSATION)
    assert ChatFormat(TINY_CHAT_TEMPLATE).stops == ()
    fmt = ChatFormat("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", "<s>", "</s>")
    assert fmt.render(CONVERSATION) == "<s>Be brief.</s>"


# -- each bound at its edge ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expr", ["'x' * N", "N * 'x'", "[0] * N", "N * [0]", "(0,) * N", "N * (0,)"]
)
def test_repetition_up_to_the_limit_passes_and_one_more_is_refused(expr):
    at = render_template("{{ (" + expr.replace("N", str(MAX_REPEAT)) + ") | length }}", [])
    assert at == str(MAX_REPEAT)
    over = refusal("{{ (" + expr.replace("N", str(MAX_REPEAT + 1)) + ") | length }}", [])
    assert over == (
        "the model's chat template repeats a text or list to over 100,000 items; refused"
    )


def test_exponent_up_to_64_passes_and_65_is_refused():
    assert render_template("{{ 2 ** 64 }}|{{ 2 ** -64 > 0 }}", []) == f"{2**64}|True"
    assert refusal("{{ 2 ** 65 }}", []) == (
        "the model's chat template raises to a power over 64 (65); refused"
    )
    assert refusal("{{ 2 ** -65.0 }}", []).endswith("power over 64 (-65.0); refused")


def test_output_up_to_the_limit_passes_and_one_more_character_is_refused():
    # 10 chunks: the check must add up the chunks, not look at one.
    n = MAX_OUTPUT_CHARS // 10
    body = "{% for i in range(10) %}{{ 'x' * " + str(n) + " }}{% endfor %}"
    assert len(render_template(body, [])) == MAX_OUTPUT_CHARS
    msg = refusal(body + "y", [])
    assert msg == "the model's chat template produced too much output; refused"


def test_range_too_big_is_refused_not_a_traceback():
    msg = refusal("{% for i in range(10**7) %}{% endfor %}", [])
    assert msg.startswith("the model's chat template asked for too much: Range too big")


@pytest.mark.parametrize(
    "name, template",
    [
        ("nested_ranges", "{% for i in range(99999) %}{% for j in range(99999) %}"
         "{% endfor %}{% endfor %}"),
        ("nested_strings", "{% set s = 'x' * 99999 %}{% for a in s %}{% for b in s %}"
         "{% endfor %}{% endfor %}"),
        ("filtered_loop", "{% for i in range(99999) %}{% for j in range(99999) if j < 0 %}"
         "{% endfor %}{% endfor %}"),
        ("macro_fan_out", "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
         "{% endmacro %}{{ f(60) }}"),
        ("recursive_loop", "{% for m in [1, 2] recursive %}{% if loop.depth < 60 %}"
         "{{ loop([1, 2]) }}{% endif %}{% endfor %}"),
        ("attribute_spin", "{% for i in range(99999) %}{% for j in range(99999) %}"
         "{% set _ = messages.append %}{% endfor %}{% endfor %}"),
    ],
)  # fmt: skip
def test_work_that_writes_nothing_stops_at_the_deadline(monkeypatch, name, template):
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.3)
    t0 = time.monotonic()
    msg = refusal(template, [])
    elapsed = time.monotonic() - t0
    assert msg == "the model's chat template took too long to render; refused"
    assert 0.3 <= elapsed < 1.5, elapsed


def test_a_template_cannot_shadow_the_loop_guard(monkeypatch):
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.3)
    template = (
        "{% set gptcli_guard = None %}{% set environment = None %}"
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    )
    assert "took too long" in refusal(template, [])


@pytest.mark.parametrize(
    "template, needle",
    [
        ("{% for %}", "the model's chat template is invalid: "),
        ("{{ messages[99].content }}", "the model's chat template is invalid: "),
        ("{{ 1 // 0 }}", "the model's chat template failed: "),
        ("{{ 1 + 'a' }}", "the model's chat template failed: "),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
    ],
)
def test_broken_templates_are_one_template_error(template, needle):
    assert needle in refusal(template)


# -- through the CLI: one line, no traceback, on time -----------------------------------


HOSTILE_TEMPLATES = {
    "range_10_7": ("{% for i in range(10**7) %}{% endfor %}", "asked for too much"),
    "nested_loops": (
        "{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "took too long to render",
    ),
}


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("case", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_is_one_line_through_the_cli(gptcli, tiny_model_factory, command, case):
    template, needle = HOSTILE_TEMPLATES[case]
    model = tiny_model_factory(f"tpl_{case}", chat_template=template)
    t0 = time.monotonic()
    # Before the fix the nested loops ran for ever: the timeout makes that a failure.
    prompt = ["Hello"] if command == "generate" else []
    r = gptcli(command, "-m", str(model), "-n", "2", *prompt, input="Hello\n", timeout=30)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("gptcli: error: ") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert elapsed < MAX_SECONDS + 10, elapsed


def test_chat_format_passes_add_generation_prompt_on():
    plain = ChatFormat(None)
    assert plain.render(CONVERSATION[:2], add_generation_prompt=False) == "Be brief.\n\nUser: Hi\n"
    fmt = ChatFormat(TINY_CHAT_TEMPLATE)
    assert fmt.render(CONVERSATION[:2], add_generation_prompt=False).endswith("Hi<|im_end|>\n")
    assert fmt.render(CONVERSATION[:2]).endswith("<|im_start|>assistant\n")


def test_block_whitespace_keyword_calls_and_filters_render_as_jinja_documents():
    # A template laid out on lines, as real ones are: trim_blocks and lstrip_blocks on.
    template = (
        "{% set ns = namespace(n=0) %}\n"
        "    {% for m in messages %}\n"
        "{% set ns.n = ns.n + 1 %}\n"
        "{{ m.role }}\n"
        "    {% endfor %}\n"
        "{{ ns.n }}|{{ 3 * 4 }}|{{ {'a': [1]} | tojson(indent=2) }}|"
        "{{ strftime_now('%Y-%m') }}|{{ bos_token }}{{ eos_token }}."
    )
    out = render_template(template, CONVERSATION[:2])
    month = time.strftime("%Y-%m")
    assert out == f'system\nuser\n2|12|{{\n  "a": [\n    1\n  ]\n}}|{month}|.'


def test_refusal_messages_are_exact():
    assert refusal("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}") == (
        "the model's chat template recursed too deeply; refused"
    )
    assert (
        refusal("{{ 1 // 0 }}")
        == "the model's chat template failed: integer division or modulo by zero"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('true') }}",
        "{{ messages.append(1) }}",  # the sandbox is immutable too
    ],
)
def test_reaching_for_python_internals_is_refused_in_so_many_words(template):
    assert refusal(template) == (
        "the model's chat template tried to reach Python internals; refused "
        "(the file may be malicious)"
    )
