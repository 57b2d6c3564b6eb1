"""The branch tree: every token taken, under the prompt, and the file it is saved to.

Node 0 is the prompt. Every other node is one token after its parent, with the
probability it had when it was chosen. Taking a different token at a node opens a
branch. Pure Python: no model, no terminal; a loaded file is checked before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import UsageError
from gptcli.limits import EXPLORE_MAX_STEPS as MAX_STEPS

FORMAT = "gptcli-explore"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024  # a tree file is read whole: bound it first
HOW = ("pick", "greedy", "sample", "force")
# What a file's "settings" may hold, and the type of each (anything else is refused,
# not replaced: a setting the user saved is never silently dropped).
SETTINGS = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repeat_penalty": float,
    "steps": int,
}


@dataclass
class Node:
    token: int  # -1 for the prompt (node 0)
    parent: int | None
    piece: bytes = b""
    logprob: float = 0.0  # the model's log probability (softmax of the raw logits, T=1)
    prob: float | None = None  # under the sampled distribution when chosen (0: cut)
    rank: int = 0  # 1: the most likely candidate at the parent
    how: str = "pick"
    children: list[int] = field(default_factory=list)


@dataclass
class ModelId:
    """What a tree's token ids and probabilities are only valid for."""

    name: str
    size: int  # the GGUF file's size in bytes
    n_vocab: int
    vocab: str  # sha256 of every token's bytes, in id order


@dataclass
class Tree:
    model: ModelId
    prompt_text: str
    prompt_tokens: list[int]
    chat: bool = False
    system: str | None = None
    settings: dict = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=lambda: [Node(-1, None)])
    current: int = 0
    # The child last walked into from each node: `right` follows it.
    last_child: dict[int, int] = field(default_factory=dict)

    # -- shape -------------------------------------------------------------

    def path(self, node: int) -> list[int]:
        """Node ids from the first generated token down to `node` (empty for the prompt)."""
        out = []
        while node:
            out.append(node)
            node = self.nodes[node].parent
        out.reverse()
        return out

    def tokens(self, node: int) -> list[int]:
        """The token ids the model has seen at `node`: the prompt, then the path."""
        return self.prompt_tokens + [self.nodes[i].token for i in self.path(node)]

    def depth(self, node: int) -> int:
        return len(self.path(node))

    def child(self, node: int, token: int) -> int | None:
        for c in self.nodes[node].children:
            if self.nodes[c].token == token:
                return c
        return None

    def add(self, parent: int, node: Node) -> int:
        """Append `node` under `parent` (or return the child that already has its token)."""
        found = self.child(parent, node.token)
        if found is not None:
            return found
        node.parent = parent
        self.nodes.append(node)
        nid = len(self.nodes) - 1
        self.nodes[parent].children.append(nid)
        return nid

    def follow(self, node: int) -> int | None:
        """The child `right` walks into: the one last visited, else the first."""
        kids = self.nodes[node].children
        if not kids:
            return None
        last = self.last_child.get(node)
        return last if last in kids else kids[0]

    def visit(self, node: int) -> None:
        """Make `node` current and remember the way to it, so `right` comes back here."""
        self.current = node
        for nid in self.path(node):
            self.last_child[self.nodes[nid].parent] = nid

    def leaf(self, node: int) -> int:
        """Where `right` would end from `node`: follow the remembered children down."""
        while (nxt := self.follow(node)) is not None:
            node = nxt
        return node

    def leaves(self) -> list[int]:
        """Every leaf, in depth-first order (the order of the tree panel)."""
        out, stack = [], [0]
        while stack:
            nid = stack.pop()
            kids = self.nodes[nid].children
            if not kids:
                out.append(nid)
            stack.extend(reversed(kids))
        return out

    def segments(self) -> list[Segment]:
        """The tree as branches: runs of single-child nodes, each under a branch point."""
        out: list[Segment] = []

        def walk(start: int, parent_seg: int | None, level: int) -> None:
            nodes = [start]
            while len(self.nodes[nodes[-1]].children) == 1:
                nodes.append(self.nodes[nodes[-1]].children[0])
            out.append(Segment(nodes, parent_seg, level))
            me = len(out) - 1
            for c in self.nodes[nodes[-1]].children:
                walk(c, me, level + 1)

        for c in self.nodes[0].children:
            walk(c, None, 0)
        return out

    # -- the file ------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": vars(self.model).copy(),
            "prompt": {
                "text": self.prompt_text,
                "tokens": list(self.prompt_tokens),
                "chat": self.chat,
                "system": self.system,
            },
            "settings": dict(self.settings),
            "current": self.current,
            "nodes": [
                {
                    "id": i,
                    "parent": n.parent,
                    "token": n.token,
                    "bytes": n.piece.hex(),
                    "text": n.piece.decode("utf-8", errors="backslashreplace"),
                    "logprob": _finite(n.logprob),
                    "prob": n.prob,
                    "rank": n.rank,
                    "how": n.how,
                }
                for i, n in enumerate(self.nodes)
                if i  # node 0 is the prompt, written above
            ],
        }

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=1)
        Path(path).write_text(text + "\n", encoding="utf-8")


@dataclass
class Segment:
    nodes: list[int]  # consecutive node ids, parent first
    parent: int | None  # index of the segment it branches from; None: from the prompt
    level: int


def _short(value) -> str:
    """A value from a file, for a one-line message: its repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no -Infinity


# -- loading ------------------------------------------------------------------------


class TreeFileError(UsageError):
    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot open the tree {path}: {reason}")


def read(path: str | Path) -> dict:
    """The JSON object in a tree file, read with a size bound."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise TreeFileError(path, e.strerror or str(e)) from None
    if len(data) > MAX_FILE_BYTES:
        raise TreeFileError(path, f"larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TreeFileError(path, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TreeFileError(path, f"not JSON (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise TreeFileError(path, "JSON nested too deeply") from None
    except ValueError as e:  # Python refuses integers of more than 4,300 digits
        raise TreeFileError(path, f"not a tree: {str(e).split(';')[0]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise TreeFileError(path, 'not a gptcli explore tree (no "format": "gptcli-explore")')
    if obj.get("version") != VERSION:
        raise TreeFileError(path, f"version {obj.get('version')!r}; this gptcli reads {VERSION}")
    return obj


def from_json(obj: dict, path: str | Path, model: ModelId, piece, n_ctx: int) -> Tree:
    """A tree from its JSON object, checked against the loaded model.

    piece(id) gives a token's bytes: every node's stored bytes must match, so a tree
    made with another tokenizer is refused even when the fingerprint was edited."""

    def bad(reason: str):
        raise TreeFileError(path, reason)

    def want(cond: bool, reason: str) -> None:
        if not cond:
            bad(reason)

    def is_int(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_num(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    m = obj.get("model")
    want(isinstance(m, dict), 'no "model" object')
    saved = ModelId(str(m.get("name")), m.get("size"), m.get("n_vocab"), str(m.get("vocab")))
    if (saved.size, saved.n_vocab, saved.vocab) != (model.size, model.n_vocab, model.vocab):
        bad(
            f"it was saved with another model ({saved.name}, {saved.size} bytes, "
            f"{saved.n_vocab} tokens); this is {model.name}, {model.size} bytes: "
            "pass that model with -m"
        )
    pr = obj.get("prompt")
    want(isinstance(pr, dict), 'no "prompt" object')
    text, toks = pr.get("text"), pr.get("tokens")
    want(isinstance(text, str), "the prompt text is not a string")
    want(isinstance(toks, list) and len(toks) > 0, "the prompt has no tokens")

    def token_ok(t) -> bool:
        return is_int(t) and 0 <= t < model.n_vocab

    for t in toks:
        want(token_ok(t), f"prompt token {t!r} is outside the vocabulary (0..{model.n_vocab - 1})")
    want(len(toks) < n_ctx, f"the prompt ({len(toks)} tokens) does not fit the context ({n_ctx})")
    system = pr.get("system")
    want(system is None or isinstance(system, str), "the system prompt is not a string")
    chat = pr.get("chat", False)
    want(isinstance(chat, bool), '"chat" is not true or false')
    settings = obj.get("settings", {})
    want(isinstance(settings, dict), '"settings" is not an object')
    for key, value in settings.items():
        kind = SETTINGS.get(key)
        want(kind is not None, f'unknown setting "{key}" (known: {", ".join(SETTINGS)})')
        ok = is_int(value) if kind is int else is_num(value)
        want(
            ok,
            f'setting "{key}" must be {"a whole number" if kind is int else "a number"}, '
            f"got {_short(value)}",
        )
    steps = settings.get("steps")
    want(
        steps is None or 1 <= steps <= MAX_STEPS,
        f"steps must be from 1 to {MAX_STEPS}, got {steps}",
    )

    tree = Tree(model, text, list(toks), chat, system, dict(settings))
    raw_nodes = obj.get("nodes")
    want(isinstance(raw_nodes, list), 'no "nodes" list')
    depth = [0]
    for i, n in enumerate(raw_nodes, start=1):
        where = f"node {i}"
        want(isinstance(n, dict), f"{where} is not an object")
        want(n.get("id") == i, f"{where}: ids must count 1, 2, 3... in order")
        parent, tok = n.get("parent"), n.get("token")
        want(
            is_int(parent) and 0 <= parent < i,
            f"{where}: parent {parent!r} is not an earlier node",
        )
        want(
            token_ok(tok),
            f"{where}: token id {tok!r} is outside the vocabulary (0..{model.n_vocab - 1})",
        )
        try:
            stored = bytes.fromhex(n.get("bytes", ""))
        except (TypeError, ValueError):
            bad(f'{where}: "bytes" is not hex')
        if stored != piece(tok):
            bad(f"{where}: token {tok} is not {stored!r} for this model's tokenizer")
        lp, prob, rank = n.get("logprob"), n.get("prob"), n.get("rank", 0)
        want(lp is None or (is_num(lp) and lp <= 1e-6), f"{where}: logprob must be <= 0")
        want(prob is None or (is_num(prob) and 0 <= prob <= 1), f"{where}: prob not in [0, 1]")
        want(is_int(rank) and 0 <= rank <= model.n_vocab, f"{where}: bad rank {rank!r}")
        how = n.get("how", "pick")
        want(how in HOW, f'{where}: "how" must be one of {", ".join(HOW)}')
        want(tree.child(parent, tok) is None, f"{where}: token {tok} twice under node {parent}")
        depth.append(depth[parent] + 1)
        want(
            len(toks) + depth[-1] <= n_ctx,
            f"{where}: the branch is longer than the context ({n_ctx} tokens; raise --ctx)",
        )
        node = Node(
            tok, parent, stored, float("-inf") if lp is None else float(lp), prob, rank, how
        )
        tree.nodes.append(node)
        tree.nodes[parent].children.append(i)
    cur = obj.get("current", 0)
    want(is_int(cur) and 0 <= cur < len(tree.nodes), f"current node {cur!r} does not exist")
    tree.visit(cur)
    return tree
