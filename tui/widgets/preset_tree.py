"""Presets grouped by folder; the leaf data is the preset name."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree


class PresetTree(Tree[str]):
    """Groups sorted with `seed` first (the article's presets); `filter` narrows by substring."""

    def __init__(self, names: list[str], **kwargs) -> None:
        super().__init__("presets", **kwargs)
        self.show_root = False
        self.names = list(names)
        self.fill(self.names, "")

    def fill(self, names: list[str], needle: str) -> None:
        self.clear()
        groups: dict[str, list[str]] = {}
        for name in names:
            if needle and needle.lower() not in name.lower():
                continue
            group, _, _rest = name.rpartition("/")
            groups.setdefault(group or "(top)", []).append(name)
        for group in sorted(groups, key=lambda g: (g != "seed", g)):
            # Text labels: a str label is read as markup, and a file named `[x].toml` would vanish.
            node = self.root.add(Text(group), expand=group == "seed" or bool(needle))
            for name in groups[group]:
                node.add_leaf(Text(name.rpartition("/")[2]), data=name)

    def first_leaf(self):
        for group in self.root.children:
            if group.is_expanded and group.children:
                return group.children[0]
        return None

    def leaf(self, name: str):
        for group in self.root.children:
            for node in group.children:
                if node.data == name:
                    return node
        return None
