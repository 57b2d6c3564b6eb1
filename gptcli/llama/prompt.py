"""From what the user typed to the tokens the model sees: raw text, or the
model's chat template (rendered in a sandbox) around a conversation."""

from __future__ import annotations

from gptcli.llama.engine import Engine
from gptcli.llama.template import ChatFormat


def chat_format(engine: Engine) -> ChatFormat:
    def text(token_id: int) -> str:
        if token_id < 0 or token_id >= engine.n_vocab:
            return ""
        return engine.piece(token_id).decode("utf-8", errors="replace")

    return ChatFormat(engine.chat_template, text(engine.bos_id), text(engine.eos_id))


def tokens_for_text(engine: Engine, text: str, *, special: bool, bos_text: str = "") -> list[int]:
    """Tokenize, adding BOS only when the model wants it and the text lacks it."""
    add_bos = engine.add_bos and not (bos_text and text.startswith(bos_text))
    return engine.tokenize(text, add_bos=add_bos, special=special)


def raw_prompt(engine: Engine, text: str) -> list[int]:
    """Plain completion: the text as it is (special-token text stays literal)."""
    return tokens_for_text(engine, text, special=False)


def chat_prompt(engine: Engine, messages: list[dict], fmt: ChatFormat | None = None) -> list[int]:
    fmt = fmt or chat_format(engine)
    rendered = fmt.render(messages, add_generation_prompt=True)
    return tokens_for_text(engine, rendered, special=True, bos_text=fmt.bos_token)


def messages_for(prompt: str, system: str | None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages
