"""Every bound gptcli puts on what it reads, in one place, each with its reason.

Model files, grammars, schemas, chat files, explorer trees and servers' answers are
untrusted: each limit below keeps one of them from exhausting memory or time, or from
showing a number that cannot be. The README's "Security and reliability" section lists
them; a module that enforces a limit imports it from here.
"""

from __future__ import annotations

# -- input: grammars, JSON Schemas, chat and tree files, the command line -----

# A grammar (--grammar, or one converted from --json-schema) is handed to llama.cpp's
# parser, which takes `x{5,2}` as about 2**64 optional copies (memory grows until the
# kernel kills us) and silently reads a bound above 2000 as "no bound". Repetition bounds
# above this are refused; llama.cpp's own ceiling is 2000.
MAX_GRAMMAR_REPEAT = 2000
# Bytes of grammar text: llama.cpp's JSON grammar is 1 KB, a converted schema tens of KB.
MAX_GRAMMAR_BYTES = 4 * 2**20
# Parentheses inside parentheses: each level is a recursive call in llama.cpp's parser
# (5,000 levels parse here). llama-cpp-python's schema converter writes maxLength n as
# n nested groups, so this sits above MAX_SCHEMA_COUNT.
MAX_GRAMMAR_NESTING = 2100
# Rule definitions: llama.cpp follows a chain of leftmost rule references recursively
# (20,000 crash it with a stack overflow; 8,000 take 2.5 s to parse).
MAX_GRAMMAR_RULES = 4000
# Copies of something that can match nothing (`x ::= "a"?` then `x{0,200}`): llama.cpp
# expands every way of matching nothing when it sets the grammar up, in time that grows
# with about the fourth power of the count (x{0,40} 1.3 s, x{0,100} 25 s, x{0,200} over a
# minute, measured). Counted along the grammar: added over a sequence, multiplied through
# nesting ((x{0,6}){0,7} counts 42, 3 s); more than this is refused.
MAX_GRAMMAR_EMPTY_REPEATS = 32

# JSON the user hands us (--json-schema, chat transcripts): nesting deeper than this is
# refused before any recursive code walks it (Python's json raises RecursionError at
# about 1,000 levels; a schema or a transcript needs a handful).
MAX_JSON_DEPTH = 100
# Bytes of a JSON Schema (inline or a file): real schemas are a few KB.
MAX_SCHEMA_BYTES = 1 * 2**20
# A number a schema's minLength/maxLength/minItems/maxItems may hold: each becomes a
# grammar repetition bound, so the grammar's limit applies.
MAX_SCHEMA_COUNT = MAX_GRAMMAR_REPEAT
# maxLength - minLength (maxItems - minItems, n - m in a pattern's {m,n}): the converter
# writes each optional repetition as one more nested group, and llama.cpp refuses more
# than about 1,000 of them ("exceeds sane defaults"), a message about a grammar the user
# never wrote.
MAX_SCHEMA_SPAN = 1000

# Bytes of a chat transcript (chat --resume, /load): read whole, so bounded first.
MAX_TRANSCRIPT_BYTES = 64 * 2**20
# Bytes of text read whole from stdin (a prompt) or read per line (--each-line): more
# than any context holds (a million tokens is about 4 MB of text).
MAX_PROMPT_BYTES = 16 * 2**20

# --each-line -j: llama.cpp holds at most 256 sequences in one context (LLAMA_MAX_SEQ)
# and gptcli keeps one for the prompt part every line shares; with --server it is the
# number of requests in flight. Never more sequences than lines are made.
MAX_JOBS = 255
# --repeat-penalty: it divides (or multiplies) float32 logits; 1e-320 made them infinite
# and the distribution NaN, 1e308 overflowed. A penalty of 1e6 already rules a repeated
# token out; 1e-6 all but forces one.
REPEAT_PENALTY_RANGE = (1e-6, 1e6)
# --threads: ggml's thread pool holds at most 512 (GGML_MAX_N_THREADS); 100,000 crashed
# llama.cpp with a segmentation fault.
MAX_THREADS = 512

# -- servers: time, size and the numbers they send ---------------------------

# --timeout's defaults. A server that does not accept a connection in 10 s is down
# or unreachable; one that is silent for 300 s between two parts of a reply is hung
# (a long prompt on a busy server can still take minutes before its first token).
CONNECT_TIMEOUT_S = 10.0
SILENCE_TIMEOUT_S = 300.0
# The hub: huggingface_hub's own default; several of its calls pass no timeout at
# all (they would wait for ever), so every hub request gets this one, or --timeout.
HUB_TIMEOUT_S = 10.0
# --timeout itself: a day is already longer than any reply worth waiting for.
MAX_TIMEOUT_S = 86_400.0

# One event line of a stream. A token's event is a few KB even with 20 alternatives;
# llama-server's last event repeats the prompt and its settings: 16 MiB leaves room.
MAX_EVENT_BYTES = 16 * 1024 * 1024
# One JSON reply (not streamed): `score` echoes every prompt token with its numbers,
# about 200 bytes a token, so 64 MiB is a prompt far beyond any context.
MAX_REPLY_BYTES = 64 * 1024 * 1024
# A whole stream, whatever -n says: a server that ignores max_tokens and sends one
# huge token per event stops here (256 MiB is ~50 million words of text).
MAX_STREAM_BYTES = 256 * 1024 * 1024
# Events in a row that carry no text and no token (a role, a usage, a reasoning
# model's hidden steps): a reasoning trace is thousands; a server that sends only
# these for ever is stopped here, long before MAX_STREAM_BYTES.
MAX_EMPTY_EVENTS = 100_000
# An HTTP error's body: only its first line is shown.
MAX_ERROR_BYTES = 64 * 1024

# --each-line --server: a request whose connection drops (reset, closed, refused) is
# sent once more before its line is reported as failed; the other lines go on.
LINE_RETRIES = 1

# Log probabilities. A probability is at most 1, so a log probability is at most 0;
# servers round in float32, so up to this much above 0 is read as 0, not refused.
LOGPROB_ROUNDING = 1e-4
# The alternatives of one token are distinct tokens: their probabilities sum to at
# most 1 (this much over is float rounding). More is impossible: refused, not shown.
PROB_SUM_SLACK = 0.01
# Alternatives read per token: more than any server allows (vLLM, Ollama 20; TGI 5);
# a server that sends millions for one token costs no more than this.
MAX_CANDIDATES = 1000
# The hub's file listing of one repo (the biggest GGUF repos list a few hundred).
MAX_HUB_FILES = 100_000
# One hub API reply (model info, a page of the file listing), uncompressed: a model info
# that lists 100,000 files is about 20 MiB.
MAX_HUB_REPLY_BYTES = 64 * 1024 * 1024
# Pages of one file listing: the hub sends up to 1,000 files a page, so 100,000 files fit;
# a hub that pages on with empty pages would otherwise be asked for ever.
MAX_HUB_PAGES = 1000

# -- views and the explorer ---------------------------------------------------

# `g` / `s` continue at most this many tokens at a time (-n, the `n` key, a tree file's
# "steps"): each token is one model call shown as it comes, and a key stops the run.
EXPLORE_MAX_STEPS = 10000

# Tables written to a pipe (lens, attention) take COLUMNS when it is set, else this
# width: wide lines rather than tables squeezed into 80 columns.
PIPE_WIDTH = 200

# `explore --load` checks every node's probability against the model before the tree
# opens (the panels show them): one model call per node with children, about 10 ms
# each on SmolLM2, so at most this many (a minute or so; a bigger tree is refused).
EXPLORE_CHECK_NODES = 8192
# How far a saved probability may be from the model's own before the file is refused
# (within it, the model's number replaces the file's): the same evaluation agrees to
# 1e-6, another backend or flash attention setting moves probabilities by a few 0.01.
EXPLORE_PROB_TOLERANCE = 0.1
