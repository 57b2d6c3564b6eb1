"""`gptcli inspect`, `gptcli tokenize` and `gptcli embed neighbors|analogy`: look
inside the model: its parts, its tokens, its embedding space."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from gptcli.commands.options import ModelOpt, VerboseOpt, read_input
from gptcli.errors import UsageError
from gptcli.terminal import safe

if TYPE_CHECKING:
    from gptcli.inside.embeddings import EmbeddingSpace, Query
    from gptcli.model.anatomy import Anatomy

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TopOpt = Annotated[int, typer.Option("--top", "-k", help="How many nearest tokens to show.")]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact",
        help='Use each word exactly as typed (default: " word", with its leading space, '
        "when that is one token).",
    ),
]

# Chip backgrounds, alternated so token boundaries show without separators.
_CHIP_STYLES = ("black on #a8d8ea", "black on #f6d6ad")
_SPECIAL_STYLE = "bold white on #8e44ad"


# -- inspect ----------------------------------------------------------------


def inspect(model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """The model's hyperparameters and its parameter count by matrix kind, read from
    the GGUF header (no inference)."""
    from gptcli.model import resolve as models
    from gptcli.model.anatomy import read_anatomy

    ref = models.resolve(model)
    anatomy = read_anatomy(ref.path)
    if as_json:
        typer.echo(json.dumps(anatomy.to_dict(), indent=2))
        return
    _print_anatomy(anatomy)


def _fmt_dims(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "per layer: " + ", ".join(str(v) for v in value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB ({n:,} bytes)"


def _print_anatomy(a: Anatomy) -> None:
    from rich.table import Table
    from rich.text import Text

    from gptcli.console import stdout_console

    console = stdout_console()
    total = a.parameters
    quant = ", ".join(
        f"{q.type} {q.tensors} tensors ({q.parameters / total:.1%} of weights)"
        if total
        else f"{q.type} {q.tensors} tensors"
        for q in a.quantization
    )
    facts = [
        ("name", a.name),
        ("architecture", a.architecture),
        ("layers", _fmt_dims(a.layers)),
        ("embedding size (d_model)", _fmt_dims(a.d_model)),
        ("attention heads", _fmt_dims(a.heads)),
        ("key/value heads", _fmt_dims(a.kv_heads)),
        ("head size", _fmt_dims(a.head_size)),
        ("feed-forward size", _fmt_dims(a.ffn)),
        ("vocabulary", _fmt_dims(a.vocabulary)),
        ("training context", _fmt_dims(a.context)),
        ("RoPE base", f"{a.rope_base:g}" if a.rope_base is not None else "-"),
        ("file type", a.file_type or "-"),
        ("quantization mix", quant or "-"),
        ("file size", _mb(a.file_size)),
        ("tensors", f"{a.tensor_count:,}"),
        ("parameters", f"{total:,}"),
        (
            "bytes per weight",
            f"{a.bytes_per_weight:.3f} ({a.bytes_per_weight * 8:.2f} bits)",
        ),
    ]
    rows = [
        (
            g.label,
            g.note or g.shapes,
            f"{g.parameters:,}" if not g.note else "-",
            f"{g.share:.2%}" if not g.note else "-",
        )
        for g in a.groups
    ]
    total_row = ("total", f"{a.tensor_count} tensors", f"{total:,}", "100.00%")
    if console.is_terminal:
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()

        for key, value in facts:
            head.add_row(key, Text(safe(value)))  # the name comes from the file
        console.print(head)
        table = Table(title="parameters by matrix kind", title_justify="left")
        table.add_column("matrix")
        table.add_column("shape (rows x columns)")
        table.add_column("parameters", justify="right")
        table.add_column("share", justify="right")
        for row in rows:
            table.add_row(*(Text(c) for c in row))
        table.add_section()
        table.add_row(*(Text(c, style="bold") for c in total_row))
        console.print(table)
        return
    width = max(len(k) for k, _ in facts)
    lines = [f"{k:<{width}}  {v}" for k, v in facts]
    lines += ["", "parameters by matrix kind"]
    cols = [("matrix", "shape (rows x columns)", "parameters", "share"), *rows, total_row]
    widths = [max(len(r[i]) for r in cols) for i in range(4)]
    for r in cols:
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        )
    typer.echo("\n".join(lines))


# -- tokenize ---------------------------------------------------------------


def tokenize(
    text: Annotated[str | None, typer.Argument(help="Text to tokenize; stdin is read too.")] = None,
    model: ModelOpt = None,
    ids: Annotated[bool, typer.Option("--ids", help="Show each token's id under it.")] = False,
    no_special: Annotated[
        bool,
        typer.Option("--no-special", help="Read text like <|im_start|> as plain text."),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Cut TEXT into the model's tokens: each token as a chip, special tokens marked,
    spaces shown as ␣ and partial UTF-8 bytes as <0xE2>."""
    from gptcli.render.tokens import token_label

    data = read_input(text)
    engine = _vocab_engine(model, verbose)
    try:
        token_ids = engine.tokenize(data, special=not no_special)
        tokens = [
            {
                "id": t,
                "piece": engine.piece(t).decode("utf-8", errors="replace"),
                "visible": token_label(engine.piece(t)),
                "bytes": engine.piece(t).hex(),  # exact: a piece may end mid-character
                "special": engine.is_control(t),
            }
            for t in token_ids
        ]
    finally:
        engine.close()
    if as_json:
        payload = {"model": str(engine.path), "count": len(tokens), "tokens": tokens}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    _print_chips(tokens, ids)


def _vocab_engine(model: str | None, verbose: bool):
    """The model's tokenizer alone: llama.cpp reads no weights (fast)."""
    from gptcli.llama.engine import Engine, EngineOptions
    from gptcli.model import resolve as models

    ref = models.resolve(model)
    return Engine(ref.path, EngineOptions(vocab_only=True, verbose=verbose))


def _print_chips(tokens: list[dict], show_ids: bool) -> None:
    from rich.cells import cell_len
    from rich.text import Text

    from gptcli.console import pipe_width, stdout_console
    from gptcli.render.tokens import token_label

    console = stdout_console()
    colour = console.is_terminal and not console.no_color
    # Without colour the chips need a visible border: [piece].
    chips = []
    for t in tokens:
        label = token_label(bytes.fromhex(t["bytes"]))
        if t["special"] and not colour:
            label = f"«{label}»"  # special tokens marked even without colour
        if not colour:
            label = f"[{label}]"
        chips.append((label, str(t["id"]), t["special"]))
    width = max(20, console.width if console.is_terminal else pipe_width(100))
    lines: list[tuple[Text, Text]] = []
    top, bottom, used = Text(), Text(), 0
    for i, (label, tid, special) in enumerate(chips):
        # Terminal cells, not characters: an emoji takes two.
        cell = max(cell_len(label), len(tid)) if show_ids else cell_len(label)
        gap = 1 if show_ids or not colour else 0
        if used and used + gap + cell > width:
            lines.append((top, bottom))
            top, bottom, used = Text(), Text(), 0
        if used and gap:
            top.append(" " * gap)
            bottom.append(" " * gap)
            used += gap
        style = _SPECIAL_STYLE if special else _CHIP_STYLES[i % 2]
        top.append(label + " " * (cell - cell_len(label)), style=style if colour else "")
        bottom.append(tid.ljust(cell), style="dim" if colour else "")
        used += cell
    if used or not lines:
        lines.append((top, bottom))
    for top, bottom in lines:
        console.print(top, markup=False, highlight=False, soft_wrap=True)
        if show_ids:
            console.print(bottom, markup=False, highlight=False, soft_wrap=True)
    n_special = sum(1 for c in chips if c[2])
    count = f"{len(chips)} tokens" + (f" ({n_special} special)" if n_special else "")
    console.print(Text(count, style="bold" if colour else ""), markup=False, highlight=False)


# -- embed ------------------------------------------------------------------

embed_app = typer.Typer(
    name="embed",
    help="Nearest tokens in the model's own token-embedding matrix (cosine similarity).",
    no_args_is_help=True,
    add_completion=False,
)


class _Space:
    """The embedding space, and the tokenizer only if a word needs it."""

    def __init__(self, model: str | None, verbose: bool):
        from gptcli.inside import embeddings
        from gptcli.model import resolve as models

        self.path = models.resolve(model).path
        self.verbose = verbose
        self._engine = None
        space = embeddings.load_cached(self.path)
        self.cached = space is not None
        if space is None:
            space = self._build()
        self.space: EmbeddingSpace = space

    def _build(self) -> EmbeddingSpace:
        from gptcli.inside import embeddings
        from gptcli.model.gguf_check import read_header

        header = read_header(self.path)
        # Dequantize first: a model without a usable embedding fails before llama.cpp.
        matrix = embeddings.dequantized_embedding(header)
        engine = self._tokenizer(header)
        pieces = [engine.piece(i) for i in range(engine.n_vocab)]
        control = [engine.is_control(i) for i in range(engine.n_vocab)]
        return embeddings.build(self.path, header, matrix, pieces, control)

    def _tokenizer(self, header=None):
        if self._engine is None:
            from gptcli.llama.engine import Engine, EngineOptions

            self._engine = Engine(
                self.path, EngineOptions(vocab_only=True, verbose=self.verbose), header=header
            )
        return self._engine

    def query(self, word: str, exact: bool) -> Query:
        from gptcli.inside.embeddings import word_query

        def tokenize(text: str) -> list[int]:
            return self._tokenizer().tokenize(text, add_bos=False, special=False)

        return word_query(self.space, word, tokenize, exact=exact)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _check_top(top: int) -> None:
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")


@embed_app.command("neighbors")
def neighbors(
    word: Annotated[str, typer.Argument(help="A word or piece of text.")],
    model: ModelOpt = None,
    top: TopOpt = 10,
    exact: ExactOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The tokens nearest to WORD in the token-embedding matrix, by cosine similarity."""
    _check_top(top)
    s = _Space(model, verbose)
    try:
        q = s.query(word, exact)
        found = s.space.nearest(s.space.vector(q.ids), top, exclude=q.ids)
    finally:
        s.close()
    _print_neighbours(s, [q], found, "neighbors", f"nearest to {q.form!r}", as_json)


@embed_app.command("analogy")
def analogy(
    a: Annotated[str, typer.Argument(help="A, e.g. king")],
    b: Annotated[str, typer.Argument(help="B, e.g. man")],
    c: Annotated[str, typer.Argument(help="C, e.g. woman")],
    model: ModelOpt = None,
    top: TopOpt = 10,
    exact: ExactOpt = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """A - B + C: the tokens nearest to that vector (the three inputs left out)."""
    _check_top(top)
    s = _Space(model, verbose)
    try:
        qa, qb, qc = (s.query(w, exact) for w in (a, b, c))
        vec = s.space.vector(qa.ids) - s.space.vector(qb.ids) + s.space.vector(qc.ids)
        found = s.space.nearest(vec, top, exclude=qa.ids + qb.ids + qc.ids)
    finally:
        s.close()
    title = f"{qa.form!r} - {qb.form!r} + {qc.form!r}"
    _print_neighbours(s, [qa, qb, qc], found, "analogy", title, as_json)


def _print_neighbours(s: _Space, queries, found, what: str, title: str, as_json: bool) -> None:
    from gptcli.render.tokens import token_label

    if as_json:
        payload = {
            "model": str(s.path),
            "what": what,
            "queries": [q.to_dict() for q in queries],
            "neighbors": [{"id": n.id, "piece": n.piece, "cosine": n.cosine} for n in found],
        }
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    from gptcli.console import stdout_console

    console = stdout_console()
    if console.is_terminal:
        from rich.table import Table
        from rich.text import Text

        for q in queries:
            console.print(Text(q.describe()), markup=False, highlight=False, soft_wrap=True)
        table = Table(title=title, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("token")
        table.add_column("id", justify="right")
        table.add_column("cosine", justify="right")
        for rank, n in enumerate(found, 1):
            table.add_row(
                str(rank), Text(token_label(s.space.piece(n.id))), str(n.id), f"{n.cosine:.3f}"
            )
        console.print(table)
        return
    lines = [q.describe() for q in queries] + [title]
    for rank, n in enumerate(found, 1):
        lines.append(f"{rank:>3}  {n.cosine:6.3f}  {n.id:>6}  {token_label(s.space.piece(n.id))}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.command("tokenize")(tokenize)
    app.add_typer(embed_app, name="embed")
