"""One module per screen. Top-level views are the app's MODES; details and dialogs are pushed."""
