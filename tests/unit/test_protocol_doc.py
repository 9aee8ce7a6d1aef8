"""docs/protocol.md embeds the state diagrams generated from the transition tables."""

from pathlib import Path

from securefed.secagg.diagram import render_all

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_doc_diagrams_match_the_transition_tables() -> None:
    text = DOC.read_text(encoding="utf-8")
    begin = text.index("<!-- BEGIN GENERATED DIAGRAMS -->") + len("<!-- BEGIN GENERATED DIAGRAMS -->")
    end = text.index("<!-- END GENERATED DIAGRAMS -->")
    assert text[begin:end].strip() == render_all().strip(), "regenerate with: python -m securefed.secagg.diagram"


def test_every_transition_appears_in_the_diagrams() -> None:
    from securefed.secagg import CLIENT_TRANSITIONS, SERVER_TRANSITIONS

    rendered = render_all()
    for table in (CLIENT_TRANSITIONS, SERVER_TRANSITIONS):
        for (state, event), target in table.items():
            assert f"{state.name} --> {target.name}: {event.__name__}" in rendered
