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
