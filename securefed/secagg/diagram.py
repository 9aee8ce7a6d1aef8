"""Draw the protocol's state diagrams (Mermaid) straight from the transition tables.

``python -m securefed.secagg.diagram`` prints them; ``docs/protocol.md``
embeds the output and a test checks the two agree, so the picture cannot go
stale.
"""

from __future__ import annotations

from enum import Enum

from securefed.secagg.client import CLIENT_TRANSITIONS
from securefed.secagg.server import SERVER_TRANSITIONS

__all__ = ["mermaid", "render_all"]


def mermaid(table: dict[tuple[Enum, type], Enum], title: str, preamble: tuple[str, ...] = ()) -> str:
    lines = [f"%% {title}: generated from the transition table", "stateDiagram-v2", *preamble]
    for (state, event), target in table.items():
        source = state.name
        lines.append(f"    {source} --> {target.name}: {event.__name__}")
    return "\n".join(lines)


def render_all() -> str:
    client_start = ("    [*] --> START", "    START --> AWAIT_KEY_LIST: start()")
    server_start = ("    [*] --> COLLECT_KEYS",)
    blocks = [
        ("ClientProtocol", CLIENT_TRANSITIONS, client_start),
        ("ServerProtocol", SERVER_TRANSITIONS, server_start),
    ]
    return "\n\n".join(f"```mermaid\n{mermaid(table, name, preamble)}\n```" for name, table, preamble in blocks)


if __name__ == "__main__":
    print(render_all())
