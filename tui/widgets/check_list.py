"""A SelectionList whose boxes say on or off by their glyph, not by colour alone.

Textual's SelectionList draws the same "X" in every box and tells a chosen
option only by the box's colour, which a monochrome terminal, a colour-blind
reader or a screenshot loses. Here a chosen option's box shows "X" and an
unchosen one is empty.
"""

from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import SelectionList
from textual.widgets.option_list import OptionDoesNotExist

ON, OFF = "X", " "


class CheckList(SelectionList[str]):
    """A SelectionList of strings with "X" in the boxes of the selected options only."""

    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        try:
            option = self.get_option_at_index(self.scroll_offset.y + y)
        except OptionDoesNotExist:
            return line
        segments = list(line)
        if len(segments) < 3:
            return line
        # SelectionList.render_line puts the box first: left edge, inner glyph, right edge.
        inner = segments[1]
        glyph = ON if option.value in self.selected else OFF
        segments[1] = Segment(glyph, inner.style, inner.control)
        return Strip(segments, line.cell_length)
