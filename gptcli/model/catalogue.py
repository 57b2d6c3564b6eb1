"""The catalogue: short names for good small models (`smollm2`, `qwen2.5-0.5b`, ...),
each a hub repo and a quant. The data is `gptcli/model/catalogue.json`, shipped in the wheel;
`models/catalogue.json` in the source tree links to it. No network, no heavy import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from gptcli.errors import GptcliError
from gptcli.model.refs import HubRef, parse_ref

_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


@dataclass(frozen=True)
class Entry:
    name: str
    repo: str
    quant: str
    description: str = ""
    embedded: bool = False  # resolves to the embedded default: never downloaded

    @property
    def ref(self) -> HubRef:
        return parse_ref(f"{self.repo}:{self.quant}")


@cache
def entries() -> dict[str, Entry]:
    """Every catalogue entry by name, checked: a broken data file fails loudly."""
    try:
        data = json.loads(
            resources.files(__package__).joinpath("catalogue.json").read_text("utf-8")
        )
    except (OSError, ValueError) as e:
        raise GptcliError(f"the model catalogue is unreadable (reinstall gptcli): {e}") from None
    out: dict[str, Entry] = {}
    for name, item in data.items():
        if not _NAME.match(name) or not isinstance(item, dict):
            raise GptcliError(f"bad catalogue entry {name!r} (see models/README.md)")
        entry = Entry(
            name=name,
            repo=str(item["repo"]),
            quant=str(item["quant"]),
            description=str(item.get("description", "")),
            embedded=bool(item.get("embedded", False)),
        )
        entry.ref  # noqa: B018 -- parse now, so a typo in the data fails here
        out[name] = entry
    return out


def lookup(name: str) -> Entry | None:
    return entries().get(name.strip().lower())
