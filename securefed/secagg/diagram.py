"""Draw the protocol's state diagrams (Mermaid) straight from the transition tables.

``python -m securefed.secagg.diagram`` prints them; ``docs/protocol.md``
embeds the output and a test checks the two agree, so the picture cannot go
stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from securefed.secagg.client import CLIENT_TRANSITIONS
from securefed.secagg.server import SERVER_TRANSITIONS

__all__ = ["mermaid", "render_all"]

State = TypeVar("State", bound=Enum)


def mermaid(table: Mapping[tuple[State, type], State], title: str, preamble: tuple[str, ...] = ()) -> str:
    lines = [f"%% {title}: generated from the transition table", "stateDiagram-v2", *preamble]
    for (state, event), target in table.items():
        source = state.name
        lines.append(f"    {source} --> {target.name}: {event.__name__}")
    return "\n".join(lines)


def render_all() -> str:
    client_start = ("    [*] --> START", "    START --> AWAIT_KEY_LIST: start()")
    server_start = ("    [*] --> COLLECT_KEYS",)
    blocks = [
        mermaid(CLIENT_TRANSITIONS, "ClientProtocol", client_start),
        mermaid(SERVER_TRANSITIONS, "ServerProtocol", server_start),
    ]
    return "\n\n".join(f"```mermaid\n{block}\n```" for block in blocks)


if __name__ == "__main__":
    print(render_all())
