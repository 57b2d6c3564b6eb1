"""Every bound gptcli puts on what it reads, in one place, each with its reason.

Model files, grammars, schemas, chat files, explorer trees and servers' answers are
untrusted: each limit below keeps one of them from exhausting memory or time, or from
showing a number that cannot be. The README's "Security and reliability" section lists
them; a module that enforces a limit imports it from here.
"""

from __future__ import annotations

# -- input: grammars, JSON Schemas, chat and tree files, the command line -----

# -- servers: time, size and the numbers they send ---------------------------

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
