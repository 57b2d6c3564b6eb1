"""The explorer's state joined to the engine: the tree, the settings, and the logits of
every visited node, kept so that moving around and changing settings cost no model call.

The engine's KV cache is brought to a node only when that node's logits are needed
and not kept: `prefill` then reuses the longest shared prefix, so stepping back costs
nothing and accepting a token, on any branch, evaluates that one token.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import replace

from gptcli.errors import GptcliError, UsageError
from gptcli.explorer import tree as treemod
from gptcli.explorer.dist import NodeLogits, View, view
from gptcli.explorer.tree import ModelId, Node, Tree
from gptcli.limits import EXPLORE_CHECK_NODES, EXPLORE_PROB_TOLERANCE
from gptcli.llama.engine import Engine
from gptcli.llama.prompt import chat_prompt, messages_for, raw_prompt
from gptcli.sampling.sampler import Sampler, SamplingParams

CACHE_BYTES = 256 * 1024 * 1024  # logits kept for revisits; older nodes are re-evaluated


def model_id(engine: Engine) -> ModelId:
    """The model a tree belongs to: its name, file size and a tokenizer fingerprint."""
    h = hashlib.sha256()
    for t in range(engine.n_vocab):
        p = engine.piece(t)
        h.update(len(p).to_bytes(2, "little") + p)
    return ModelId(engine.name, int(engine.header.file_size), engine.n_vocab, h.hexdigest())


class Session:
    def __init__(self, engine: Engine, tree: Tree, params: SamplingParams, steps: int = 10):
        self.engine = engine
        self.tree = tree
        self.params = params.validate()
        self.steps = steps  # N for `g` and `s`
        self.rng_seed = params.seed
        self._sampler = Sampler(params, engine.n_vocab)
        self._cache: OrderedDict[int, NodeLogits] = OrderedDict()
        self._cache_rows = max(8, CACHE_BYTES // max(1, engine.n_vocab * 12))
        self.last_eval: tuple[int, float] | None = None  # (tokens, seconds) of the last call
        self.evaluations = 0  # model calls so far (tests check that settings cost none)
        self._last_view: tuple | None = None
        # --steer: the vectors as given (multiplier 1); keys rescale them live
        self.steer_base = engine.steering
        self.steer_scale = 1.0 if self.steer_base is not None else 0.0
        self._steer_off_from = 1.0  # what `o` switches back on

    # -- logits --------------------------------------------------------------

    def logits(self, node: int) -> NodeLogits:
        """The next-token logits at `node`, evaluated only when not cached."""
        cached = self._cache.get(node)
        if cached is not None:
            self._cache.move_to_end(node)
            return cached
        tokens = self.tree.tokens(node)
        t0 = time.perf_counter()
        row = self.engine.prefill(tokens)
        nl = NodeLogits(row)  # a copy: the engine's row is a view, overwritten next call
        self.last_eval = (self.engine.last_prefill_evaluated, time.perf_counter() - t0)
        self.evaluations += 1
        self._cache[node] = nl
        while len(self._cache) > self._cache_rows:
            self._cache.popitem(last=False)
        return nl

    def view(self, node: int | None = None) -> View:
        node = self.tree.current if node is None else node
        nl = self.logits(node)
        key = (node, id(nl), self.params)
        if self._last_view is None or self._last_view[0] != key:  # one redraw asks twice
            self._last_view = (key, view(nl, self.params, self.tree.tokens(node)))
        return self._last_view[1]

    def is_cached(self, node: int) -> bool:
        return node in self._cache

    # -- steering ----------------------------------------------------------------

    def set_steer_scale(self, scale: float) -> None:
        """Multiply the --steer vectors by `scale` (0: off). Every node's logits were
        computed under the old vector, so they are dropped and re-evaluated on view."""
        if self.steer_base is None:
            raise UsageError("no control vector to scale: start explore with --steer FILE")
        data, first, last = self.steer_base
        if scale == 0 and self.steer_scale:
            self._steer_off_from = self.steer_scale
        self.steer_scale = scale
        self.engine.set_steering(data * scale if scale else None, first, last)
        self._cache.clear()
        self._last_view = None

    def toggle_steering(self) -> None:
        self.set_steer_scale(0.0 if self.steer_scale else self._steer_off_from)

    # -- settings ----------------------------------------------------------------

    def set_params(self, **changes) -> None:
        params = replace(self.params, **changes).validate()
        rng = self._sampler.rng  # the draws go on from where they were
        self.params = params
        self._sampler = Sampler(params, self.engine.n_vocab)
        self._sampler.rng = rng
        self.tree.settings = self.settings()

    def settings(self) -> dict:
        p = self.params
        return {
            "temperature": p.temperature,
            "top_k": p.top_k,
            "top_p": p.top_p,
            "min_p": p.min_p,
            "repeat_penalty": p.repeat_penalty,
            "steps": self.steps,
        }

    # -- moving ------------------------------------------------------------------

    def accept(self, token: int, how: str = "pick") -> int:
        """Take `token` after the current node (a new branch if it was not taken
        before), evaluate it, and make it current."""
        tree = self.tree
        parent = tree.current
        existing = tree.child(parent, token)
        if existing is None:
            if not 0 <= token < self.engine.n_vocab:
                raise UsageError(f"token id {token} is outside the vocabulary")
            if len(tree.tokens(parent)) + 1 > self.engine.n_ctx:
                raise GptcliError(f"the context is full ({self.engine.n_ctx} tokens)")
            v = self.view(parent)
            nl = self.logits(parent)
            rank = nl.rank(token) if v.order is nl.order else _rank_in(v, token)
            existing = tree.add(
                parent,
                Node(
                    token,
                    parent,
                    self.engine.piece(token),
                    nl.logprob(token),
                    v.sampled_prob(rank - 1),  # 0: cut by the current truncation
                    rank,
                    how,
                ),
            )
        tree.visit(existing)
        self.logits(existing)  # one decode; nothing when it was cached
        return existing

    def back(self) -> bool:
        node = self.tree.nodes[self.tree.current]
        if node.parent is None:
            return False
        self.tree.visit(node.parent)  # the cache keeps its logits: nothing evaluated
        return True

    def forward(self) -> bool:
        nxt = self.tree.follow(self.tree.current)
        if nxt is None:
            return False
        self.tree.visit(nxt)
        self.logits(nxt)
        return True

    def goto(self, node: int) -> None:
        if not 0 <= node < len(self.tree.nodes):
            raise UsageError(f"no node {node}")
        self.tree.visit(node)
        self.logits(node)

    def at_end(self) -> bool:
        """The current token ends the text: nothing follows it."""
        node = self.tree.nodes[self.tree.current]
        return node.token >= 0 and self.engine.is_eog(node.token)

    def run(self, n: int, greedy: bool) -> int:
        """Continue n tokens, greedily or sampled; stops after an end-of-text token.
        Returns how many were taken."""
        t0 = time.perf_counter()
        taken = 0
        while taken < n and self.step(greedy):
            taken += 1
        if taken:
            self.last_eval = (taken, time.perf_counter() - t0)
        return taken

    def step(self, greedy: bool) -> bool:
        """Take one token, greedily or sampled; False (nothing taken) at the end of the
        text or with the context full. The app calls it once per tick of its loop, so a
        long run shows its tokens as they come and a key stops it."""
        if self.at_end() or len(self.tree.tokens(self.tree.current)) >= self.engine.n_ctx:
            return False
        cur = self.tree.current
        if greedy:
            self.accept(int(self.view(cur).order[0]), "greedy")
        else:
            nl = self.logits(cur)
            draw = self._sampler.sample(nl.logits, self.tree.tokens(cur))
            child = self.accept(draw.token, "sample")
            self.tree.nodes[child].prob = draw.prob
        return True

    def force_tokens(self, text: str) -> list[int]:
        """The tokens `force` takes for `text` (no BOS, no special tokens)."""
        tokens = self.engine.tokenize(text, add_bos=False, special=False)
        if not tokens:
            raise UsageError("that text makes no tokens")
        return tokens

    def force(self, text: str) -> int:
        """Take the tokens of `text` one after another."""
        tokens = self.force_tokens(text)
        for t in tokens:
            self.accept(t, "force")
        return len(tokens)

    # -- text ------------------------------------------------------------------

    def branch_text(self, node: int | None = None) -> str:
        """The text of the branch up to `node`: prompt and completion for a raw prompt,
        the reply alone under a chat template."""
        node = self.tree.current if node is None else node
        reply = b"".join(self.tree.nodes[i].piece for i in self.tree.path(node))
        text = reply.decode("utf-8", errors="replace")
        return text if self.tree.chat else self.tree.prompt_text + text

    def save(self, path: str) -> None:
        self.tree.settings = self.settings()
        try:
            self.tree.save(path)
        except OSError as e:
            raise GptcliError(f"cannot save the tree to {path}: {e.strerror or e}") from None


def _rank_in(v: View, token: int) -> int:
    import numpy as np

    return int(np.flatnonzero(v.order == token)[0]) + 1


def prompt_tokens(engine: Engine, text: str, chat: bool, system: str | None) -> list[int]:
    """The tokens the model sees for a prompt: raw text, or the chat template around it;
    an empty prompt is BOS alone (what `next` shows after nothing)."""
    tokens = chat_prompt(engine, messages_for(text, system)) if chat else raw_prompt(engine, text)
    if not tokens:
        bos = engine.bos_id
        if not 0 <= bos < engine.n_vocab:
            raise UsageError("the prompt tokenizes to nothing and the model has no BOS token")
        tokens = [bos]
    return tokens


def load_tree(path: str, engine: Engine) -> Tree:
    obj = treemod.read(path)
    tree = treemod.from_json(obj, path, model_id(engine), engine.piece, engine.n_ctx)
    # The text panel shows the prompt's text, the model sees its tokens: they must be
    # one prompt, or the screen shows text the model never saw.
    if prompt_tokens(engine, tree.prompt_text, tree.chat, tree.system) != tree.prompt_tokens:
        raise treemod.TreeFileError(
            path,
            "the prompt's tokens are not its text"
            + (" under the chat template" if tree.chat else "")
            + " for this model's tokenizer",
        )
    _check_probabilities(tree, engine, path)
    known = {k: v for k, v in tree.settings.items() if k in SamplingParams.__dataclass_fields__}
    try:
        replace(SamplingParams(), **known).validate()  # the ranges, as on the command line
    except UsageError as e:
        raise treemod.TreeFileError(path, e.message) from None
    return tree


def _check_probabilities(tree: Tree, engine: Engine, path: str) -> None:
    """Every node's probability in the file against the model's own, before the tree
    opens: the panels show these numbers, so a file cannot put them in the model's
    mouth; what opens carries the model's numbers. One model call per node with
    children, token by token as the explorer evaluates (a batched pass differs from
    it by up to 0.06 in probability)."""
    import numpy as np

    inner = [nid for nid, node in enumerate(tree.nodes) if node.children]
    if len(inner) > EXPLORE_CHECK_NODES:
        raise treemod.TreeFileError(
            path,
            f"{len(inner)} of its nodes have children; a tree is checked against the "
            f"model before it opens, up to {EXPLORE_CHECK_NODES}",
        )
    stack = [0]  # depth first: each call evaluates one token after the cached prefix
    while stack:
        nid = stack.pop()
        kids = tree.nodes[nid].children
        if not kids:
            continue
        row = np.asarray(engine.prefill(tree.tokens(nid)), dtype=np.float64)
        top = row.max()
        log_z = top + math.log(float(np.exp(row - top).sum()))
        for c in kids:
            node = tree.nodes[c]
            said = math.exp(node.logprob) if node.logprob > -700 else 0.0
            logprob = float(row[node.token]) - log_z
            if abs(said - math.exp(logprob)) > EXPLORE_PROB_TOLERANCE:
                raise treemod.TreeFileError(
                    path,
                    f"node {c}: the file gives token {node.token} probability {said:.4f}, "
                    f"the model {math.exp(logprob):.4f}",
                )
            # What is shown is this model's number here (another machine's backend may
            # differ by a few hundredths), and the rank that goes with it.
            node.logprob = logprob
            node.rank = int(np.count_nonzero(row > row[node.token])) + 1
        stack.extend(reversed(kids))
