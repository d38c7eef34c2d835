"""A page's elements as a person's browser builds them, for tests that read HTML: each
element's tag, attributes, text and the classes of its ancestors, with the standard
library's HTML parser (the tokenizer browsers specify: text stays text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    ancestors: list[Element]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def within(self, cls: str) -> bool:
        return any(cls in a.classes for a in self.ancestors)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, list(self.open))
        self.elements.append(el)
        if tag not in VOID:
            self.open.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}, list(self.open)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i].tag == tag:
                del self.open[i:]
                return

    def handle_data(self, data: str) -> None:
        for el in self.open:
            el.parts.append(data)


def parse(page: str) -> list[Element]:
    parser = _Parser()
    parser.feed(page)
    parser.close()
    return parser.elements


def select(elements: list[Element], tag: str | None = None, cls: str | None = None,
           within: str | None = None) -> list[Element]:  # fmt: skip
    return [
        e for e in elements
        if (tag is None or e.tag == tag)
        and (cls is None or cls in e.classes)
        and (within is None or e.within(within))
    ]  # fmt: skip
