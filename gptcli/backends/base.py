"""The one interface every backend implements, and what each can give, as data.

A command builds a `Request`, asks its backend to `start` it and hands the events
(events.TokenEvent, then Finish) to a renderer; `next_steps`, `score` and
`tokenize` are the other questions a command asks. What a backend cannot answer
is declared in `Capabilities`; a command that needs one calls `require` (an
error) or `lacking` (a notice, then a degraded answer), so the wording lives here.

A backend prints nothing: what it has to say goes to its `notify` and `report_error`
hooks, which the command that opened it points at the console.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from gptcli.backends.lines import line_prompt, ordered
from gptcli.errors import GptcliError

if TYPE_CHECKING:  # types only: sampling brings numpy, which --help does without
    from gptcli.backends.constraints import Constraint
    from gptcli.sampling.distribution import NextTokens
    from gptcli.sampling.sampler import SamplingParams


@dataclass(frozen=True)
class Capabilities:
    """What a backend can give. Each field's meaning is in CAPABILITY_TEXT."""

    full_distribution: bool = False  # every token's logit: entropy, any temperature
    token_ids: bool = False  # the tokenizer's ids (not only token texts)
    sampled_distribution: bool = False  # the distribution a token was actually drawn from
    model_logprobs: bool = False  # the model's own log probability of each token
    prompt_logprobs: bool = False  # each prompt token's probability given those before it
    internals: bool = False  # residual streams and attention (lens, attention, explore)
    grammar: bool = False  # a grammar or JSON-schema constraint on the tokens
    parallel: bool = False  # several generations in flight (--each-line -j N)
    steering: bool = False  # a control vector added to the residual stream (--steer)


CAPABILITY_TEXT = {
    "full_distribution": "the whole next-token distribution",
    "token_ids": "token ids",
    "sampled_distribution": "the distribution a token was sampled from",
    "model_logprobs": "the model's log probabilities",
    "prompt_logprobs": "the prompt's log probabilities",
    "internals": "the model's internals (residual stream, attention)",
    "grammar": "grammar-constrained sampling",
    "parallel": "several generations at once",
    "steering": "control vectors (--steer)",
}
assert set(CAPABILITY_TEXT) == {f.name for f in fields(Capabilities)}


def missing(backend: Backend, capability: str, what: str) -> str:
    """The one sentence for a capability a backend lacks."""
    return f"{backend.label} does not give {CAPABILITY_TEXT[capability]}: {what}"


def require(backend: Backend, capability: str, what: str, exit_code: int = 1) -> None:
    """Raise the shared error unless the backend has `capability`."""
    if not backend.has(capability):
        raise GptcliError(missing(backend, capability, what), exit_code=exit_code)


def lacking(backend: Backend, capability: str, what: str) -> bool:
    """True (after the shared notice) when the backend lacks `capability`."""
    if backend.has(capability):
        return False
    backend.notify(missing(backend, capability, what))
    return True


@dataclass(frozen=True)
class Request:
    """One generation: a prompt (with the chat template unless `raw`) and how to sample."""

    text: str
    raw: bool
    system: str | None
    params: SamplingParams
    max_tokens: int | None = None
    stops: tuple[str, ...] = ()
    n_top: int = 0  # alternatives reported per token
    model_probs: bool = False  # the model's own log probability of each token and alternative
    sampled_probs: bool = False  # the distribution each token was drawn from
    constraint: Constraint | None = None  # the output must match it


@dataclass(frozen=True)
class NextStep:
    """One step of `next`: the prompt length in tokens (None: unknown) and the
    distribution.NextTokens at that position."""

    position: int | None
    dist: NextTokens
    masked: NextTokens | None = None  # the same under a constraint's grammar (None: none)


def silent(message: str) -> None:
    """Where a backend's notices go until its user points them somewhere."""


class Backend:
    """A model that runs somewhere: locally on llama.cpp, or behind an HTTP server."""

    notify: Callable[[str], None] = staticmethod(silent)  # a notice (open_backend: stderr)
    report_error: Callable[[str], None] = staticmethod(silent)  # an error that does not stop
    location: str | None = None  # where it runs, for --stats: None here, else the server's URL

    label: str = "the backend"  # "the local model", "the server at http://..."
    name: str = ""  # the model's name, for the chat banner
    capabilities: Capabilities = Capabilities()
    n_vocab: int | None = None  # None where unknown (a server)
    n_ctx: int | None = None

    def has(self, capability: str) -> bool:
        """Whether this backend gives `capability` (a field of Capabilities)."""
        return getattr(self.capabilities, capability)

    def piece(self, token: int) -> bytes:
        """A token's exact bytes (a remote token known only by its text: that text)."""
        raise NotImplementedError

    def is_control(self, token: int) -> bool:
        """A control token (BOS, EOS ...) that `score` leaves out of the coloured text."""
        return False

    def start(self, request: Request):
        """A generation: iterate it for TokenEvents then one Finish; `.finish(reason)`
        gives the summary so far after an interruption."""
        raise NotImplementedError

    def next_steps(
        self,
        text: str,
        *,
        chat: bool,
        system: str | None,
        top: int,
        steps: int,
        temperatures,
        constraint=None,
    ) -> Iterator[NextStep]:
        """The top candidates after `text`, then after each greedy choice (under
        `constraint`, a constraints.Constraint, also the masked distribution, and the
        greedy walk follows it; only a backend with the full distribution takes one)."""
        raise NotImplementedError

    def score(self, text: str):
        """scoring.Scores of `text`: each token given those before it."""
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def each_line(
        self, lines: Iterable[str], prefix: str | None, request: Request, jobs: int
    ) -> Iterator[str]:
        """The whole text of one generation per line (`prefix`, a blank line, then the
        line), in input order, `jobs` at a time; a blank line gives a blank text.
        The one place a batched local implementation (issue 16) plugs in."""

        def work(line: str) -> str:
            if not line.strip():
                return ""  # a blank line stays a blank line: nothing to ask
            return collect_text(self.start(replace(request, text=line_prompt(prefix, line))))

        if jobs == 1:
            return (work(line) for line in lines)
        return ordered(lines, work, jobs)

    def close(self) -> None:
        """Free what the backend holds."""


def collect_text(events: Iterable) -> str:
    """The whole text of a generation's events."""
    from gptcli.backends.events import Finish

    parts = []
    for event in events:
        parts.append(event.text)
        if isinstance(event, Finish):
            break
    return "".join(parts)
