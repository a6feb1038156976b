"""trialdeck's terminal front end: the Typer CLI (tui.cli) and the Textual app (tui.app).

Kept import-light: importing this package loads neither textual nor torch.
"""
