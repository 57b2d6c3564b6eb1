"""The local backend: a GGUF model on llama.cpp (llama/engine.py) with gptcli's own sampler.

It has everything: the whole vocabulary's logits at every step (so any temperature,
the entropy, the distribution actually sampled), token ids, prompt scoring, and the
internals that lens/attention/explore read from the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from gptcli.backends.base import Backend, Capabilities, NextStep, Request
from gptcli.backends.lines import line_prompt
from gptcli.errors import UsageError
from gptcli.llama.template import PLAIN_NOTICE

LOCAL = Capabilities(
    full_distribution=True,
    token_ids=True,
    sampled_distribution=True,
    model_logprobs=True,
    prompt_logprobs=True,
    internals=True,
    grammar=True,  # llama.cpp's grammar sampler (grammar.Grammar)
    parallel=True,  # --each-line -j N: several sequences in one context (backends/batching.py)
    steering=True,  # llama_set_adapter_cvec (engine.set_steering)
)


class LocalBackend(Backend):
    label = "the local model"
    capabilities = LOCAL

    def __init__(self, engine):
        self.engine = engine
        self.name = engine.name
        self.n_vocab = engine.n_vocab
        self.n_ctx = engine.n_ctx
        self._said: set[str] = set()
        self._grammars: dict = {}  # gbnf text: its engine.Grammar, parsed once

    def piece(self, token: int) -> bytes:
        return self.engine.piece(token)

    def is_control(self, token: int) -> bool:
        return self.engine.is_control(token)

    def _once(self, message: str) -> None:
        # Notices about the prompt's format are said once, not once per --each-line line.
        if message not in self._said:
            self._said.add(message)
            self.notify(message)

    def prompt_tokens(self, request: Request) -> tuple[list[int], list[str]]:
        """The prompt's tokens and the stop strings its format adds."""
        from gptcli.llama.prompt import chat_format, chat_prompt, messages_for, raw_prompt

        engine = self.engine
        if request.raw:
            if request.system:
                self._once("--system is ignored with --raw")
            return raw_prompt(engine, request.text), []
        fmt = chat_format(engine)
        if fmt.template is None:
            self._once(PLAIN_NOTICE + " (--raw for plain completion)")
        tokens = chat_prompt(engine, messages_for(request.text, request.system), fmt)
        return tokens, list(fmt.stops)

    def start(self, request: Request):
        from gptcli.backends.generation import Generation
        from gptcli.llama.sampler_chain import NativeSampler
        from gptcli.sampling.sampler import Sampler

        tokens, stops = self.prompt_tokens(request)
        if not tokens:
            raise UsageError("the prompt tokenizes to nothing")
        if request.constraint is None:
            # llama.cpp's chain draws and decodes ahead; Python shows the token before.
            sampler = NativeSampler(self.engine, request.params, tokens)
        else:
            sampler = Sampler(request.params, self.engine.n_vocab)
        return Generation(
            self.engine,
            tokens,
            sampler,
            request.max_tokens,
            list(request.stops) + stops,
            n_top=request.n_top,
            model_probs=request.model_probs,
            grammar=self.grammar_for(request.constraint),
            describe=bool(request.sampled_probs),
        )

    def grammar_for(self, constraint):
        """The constraint's grammar, parsed once per backend and rewound for each start."""
        if constraint is None:
            return None
        grammar = self._grammars.get(constraint.gbnf)
        if grammar is None:
            grammar = self._grammars[constraint.gbnf] = constraint.grammar(self.engine)
        else:
            grammar.reset()
        return grammar

    def each_line_results(self, lines, prefix: str | None, request: Request, jobs: int):
        """--each-line on the batched engine: each line's batching.LineResult in input
        order, `jobs` lines decoded together; a failed line is one error line on stderr,
        and a failure once every line is through."""
        from gptcli.backends.batching import BatchSettings, report_failures, run_lines

        def prompt_for(line: str) -> list[int]:
            return self.prompt_tokens(replace(request, text=line_prompt(prefix, line)))[0]

        _, format_stops = self.prompt_tokens(replace(request, text=prefix or ""))
        settings = BatchSettings(
            request.params,
            request.max_tokens,
            list(request.stops) + format_stops,
            n_top=request.n_top,
            model_probs=request.model_probs,
            keep_events=bool(request.n_top or request.model_probs),
        )
        results = run_lines(self.engine, lines, jobs, prompt_for, settings)
        return report_failures(results, self.report_error)

    def each_line(self, lines, prefix: str | None, request: Request, jobs: int):
        if request.constraint is not None:  # a grammar sampler follows one sequence
            if jobs > 1:
                self._once("with a grammar, local lines run one at a time: -j ignored")
            return super().each_line(lines, prefix, request, 1)
        return (r.text for r in self.each_line_results(lines, prefix, request, jobs))

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
        from gptcli.llama.prompt import chat_prompt, messages_for, raw_prompt
        from gptcli.sampling.distribution import next_tokens
        from gptcli.sampling.sampler import check_logits

        engine = self.engine
        if top > engine.n_vocab:
            raise UsageError(f"--top must be at most {engine.n_vocab} (the vocabulary), got {top}")
        if chat:
            tokens = chat_prompt(engine, messages_for(text, system))
        else:
            if system:
                self.notify("--system is ignored without --chat")
            tokens = raw_prompt(engine, text)
        if not tokens:
            bos = engine.bos_id
            if not 0 <= bos < engine.n_vocab:
                raise UsageError("the prompt tokenizes to nothing and the model has no BOS token")
            tokens = [bos]
            piece = engine.piece(bos).decode("utf-8", errors="replace")
            self.notify(f"empty prompt: showing what follows the BOS token {piece}")
        grammar = self.grammar_for(constraint)
        logits = engine.prefill(tokens)
        for step in range(steps):
            check_logits(logits, len(tokens))  # no NaN shown as a probability
            # Copy: the logits are a view into llama.cpp's buffer, valid until the next call.
            dist = next_tokens(logits.copy(), top, temperatures)
            masked = None
            if grammar is not None:
                masked = next_tokens(grammar.mask(logits), top, temperatures)
                # Fewer allowed tokens than --top: the forbidden ones (probability 0) go.
                kept = tuple(c for c in masked.candidates if c.logprob > float("-inf"))
                masked = replace(masked, candidates=kept)
            yield NextStep(len(tokens), dist, masked)
            if step + 1 == steps:
                return
            chosen = (masked or dist).candidates[0].id  # greedy: the most likely token
            if engine.is_eog(chosen):
                self.notify("the most likely next token ends the text: no more steps")
                return
            if grammar is not None:
                grammar.accept(chosen)
            tokens.append(chosen)
            if engine.n_past >= engine.n_ctx:
                self.notify(f"the context is full ({engine.n_ctx} tokens)")
                return
            logits = engine.step(chosen)

    def score(self, text: str):
        from gptcli.backends.scoring import score_tokens
        from gptcli.llama.prompt import raw_prompt

        tokens = raw_prompt(self.engine, text)
        if len(tokens) < 2:
            raise UsageError(
                "the text is a single token: nothing to score (a token needs a context)"
            )
        return score_tokens(self.engine, tokens)

    def tokenize(self, text: str) -> list[int]:
        from gptcli.llama.prompt import raw_prompt

        return raw_prompt(self.engine, text)

    def close(self) -> None:
        self.engine.close()
