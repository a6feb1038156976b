"""trialdeck's terminal front end: the Typer CLI (trialdeck.tui.cli) and the Textual app (trialdeck.tui.app).

Kept import-light: importing this package loads neither textual nor torch.
"""
