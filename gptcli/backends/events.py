"""What a generation yields, whichever backend runs it: a TokenEvent per token (with the
distribution it was drawn from), then one Finish with the counts and Timings. Renderers
read these; nothing here computes or prints."""

from __future__ import annotations

from dataclasses import dataclass

from gptcli.sampling.sampler import Draw


@dataclass(frozen=True)
class Forced:
    """A grammar refused the token the model drew first: which, and how likely it was."""

    wanted: int
    wanted_prob: float  # under the distribution drawn from before the mask


@dataclass(frozen=True)
class TokenEvent:
    index: int  # 0 for the first generated token
    id: int
    piece: bytes  # the token's exact bytes
    text: str  # text released for printing at this step (may be "")
    draw: Draw  # the distribution the token was drawn from (after a grammar's mask)
    forced: Forced | None = None  # set when a grammar refused the model's own draw


@dataclass(frozen=True)
class Timings:
    load_s: float
    prompt_s: float  # evaluating the prompt
    ttft_s: float  # start of prompt evaluation to first token
    generation_s: float  # after the prompt, until the end
    prompt_tokens_evaluated: int  # prompt tokens not found in the cache

    def prompt_tps(self) -> float:
        return self.prompt_tokens_evaluated / self.prompt_s if self.prompt_s > 0 else 0.0


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop", "length", "context" or "interrupted"
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    text: str = ""  # text still held back at the end, to print last
    stop: str | None = None  # the stop string that ended it
    complete: bool | None = None  # under a grammar: is the document whole? (None: no grammar)

    def generation_tps(self) -> float:
        s = self.timings.generation_s
        return self.completion_tokens / s if s > 0 else 0.0


Event = TokenEvent | Finish
