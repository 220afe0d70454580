"""Confluence storage XHTML and Notion blocks to markdown: what is kept, what is dropped, never a tag dumped."""

from __future__ import annotations

from kbsync.sources.confluence_storage import storage_to_markdown
from kbsync.sources.notion_blocks import blocks_to_markdown, rich_text_to_markdown


def rt(text: str, **annotations: bool) -> dict:
    return {"plain_text": text, "annotations": annotations, "href": None}


def test_storage_headings_inline_marks_entities_and_links() -> None:
    md = storage_to_markdown(
        "<h1>Intro&nbsp;&mdash; here</h1><p>Hi <strong>bold</strong>, <em>it</em>, <code>x=1</code> and "
        '<a href="https://a.example/">a link</a>.<br/>Next line</p>'
    )
    assert md == "# Intro \u2014 here\n\nHi **bold**, *it*, `x=1` and [a link](https://a.example/).\nNext line\n"


def test_storage_nested_lists_tasks_and_tables() -> None:
    md = storage_to_markdown(
        "<ol><li>first<ul><li>inner</li></ul></li><li>second</li></ol>"
        "<ac:task-list><ac:task><ac:task-status>incomplete</ac:task-status><ac:task-body>todo</ac:task-body>"
        "</ac:task></ac:task-list>"
        "<table><tbody><tr><td>no</td><td>header</td></tr></tbody></table>"
    )
    assert "1. first\n   - inner\n2. second" in md
    assert "- [ ] todo" in md
    assert "|  |  |\n|---|---|\n| no | header |" in md


def test_storage_macros_kept_and_dropped() -> None:
    md = storage_to_markdown(
        '<ac:structured-macro ac:name="note"><ac:rich-text-body><p>Careful.</p></ac:rich-text-body>'
        "</ac:structured-macro>"
        '<ac:structured-macro ac:name="expand"><ac:parameter ac:name="title">More</ac:parameter>'
        "<ac:rich-text-body><p>Expanded text.</p></ac:rich-text-body></ac:structured-macro>"
        '<ac:structured-macro ac:name="noformat"><ac:plain-text-body><![CDATA[raw <text>]]></ac:plain-text-body>'
        "</ac:structured-macro>"
        '<ac:structured-macro ac:name="toc"><ac:parameter ac:name="maxLevel">2</ac:parameter></ac:structured-macro>'
        '<ac:structured-macro ac:name="attachments"/><p><ac:emoticon ac:name="smile"/>'
        '<ac:image><ri:url ri:value="https://x/y.png"/></ac:image></p>'
        "<ac:layout><ac:layout-section><ac:layout-cell><p>In a layout.</p></ac:layout-cell></ac:layout-section>"
        "</ac:layout>"
    )
    assert "> Careful." in md
    assert "**More**\n\nExpanded text." in md
    assert "```\nraw <text>\n```" in md
    assert "In a layout." in md
    for dropped in ("maxLevel", "y.png", "smile", "ac:", "ri:"):
        assert dropped not in md


def test_storage_empty_and_broken_bodies() -> None:
    assert storage_to_markdown("") == ""
    assert "kept" in storage_to_markdown("<p>kept<p>unclosed")


def test_rich_text_marks_and_links() -> None:
    text = rich_text_to_markdown(
        [
            rt("plain "),
            rt("bold", bold=True),
            rt(" "),
            rt("both", bold=True, italic=True),
            {"plain_text": "site", "annotations": {"code": True}, "href": "https://s.example"},
        ]
    )
    assert text == "plain **bold** ***both***[`site`](https://s.example)"


def test_blocks_lists_nest_and_switch_kind() -> None:
    md = blocks_to_markdown(
        [
            {
                "type": "numbered_list_item",
                "numbered_list_item": {"rich_text": [rt("one")]},
                "children": [{"type": "to_do", "to_do": {"rich_text": [rt("sub task")], "checked": False}}],
            },
            {"type": "numbered_list_item", "numbered_list_item": {"rich_text": [rt("two")]}},
            {"type": "bulleted_list_item", "bulleted_list_item": {"rich_text": [rt("bullet")]}},
        ]
    )
    assert md == "1. one\n   - [ ] sub task\n2. two\n\n- bullet\n"


def test_blocks_dropped_types_and_containers() -> None:
    md = blocks_to_markdown(
        [
            {
                "type": "column_list",
                "column_list": {},
                "children": [
                    {
                        "type": "column",
                        "column": {},
                        "children": [{"type": "quote", "quote": {"rich_text": [rt("Quoted")]}}],
                    }
                ],
            },
            {
                "type": "heading_3",
                "heading_3": {"rich_text": [rt("Toggle heading")], "is_toggleable": True},
                "children": [{"type": "paragraph", "paragraph": {"rich_text": [rt("Inside")]}}],
            },
            {"type": "embed", "embed": {"url": "https://e.example"}},
            {"type": "bookmark", "bookmark": {"url": "https://b.example"}},
            {"type": "child_page", "child_page": {"title": "Sub page"}},
            {"type": "file", "file": {}},
            {"type": "mystery_block", "mystery_block": {"rich_text": [rt("unknown")]}},
        ]
    )
    assert md == "> Quoted\n\n### Toggle heading\n\nInside\n"
