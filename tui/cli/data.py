"""`trialdeck data`: put the embedded dataset on disk as your own data would be (arrays, image folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from trialdeck.tui.cli.common import HomeOpt, JsonOpt, emit, handle_errors

app = typer.Typer(help="Write example data in the forms your own data takes.", no_args_is_help=True)

FormatOpt = Annotated[str, typer.Option("--format", metavar="npz|imagefolder",
                                        help="npz: DIR/digits.npz (x, y, x_val, y_val), for dataset = \"arrays\"; "
                                             "imagefolder: DIR/train/<class>/*.png and DIR/val/<class>/*.png, for "
                                             "dataset = \"imagefolder\".", show_default=False)]


@app.command("export")
@handle_errors
def data_export(
    dataset: Annotated[str, typer.Argument(help="The dataset to write: digits (embedded, offline).")],
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write it (created if missing).")],
    format_: FormatOpt,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Held out as the validation set "
                                                "(x_val/y_val, val/); 0: none, data.val_fraction splits at each run.")] = 0.2,
    home: HomeOpt = None,  # taken like every command's; the files go to DIR, not the workspace
    as_json: JsonOpt = False,
) -> None:
    """Write DATASET to DIR in the form `[data] dataset = "arrays"` or `"imagefolder"` reads."""
    # Deferred: the writer imports numpy, scikit-learn and Pillow (and torch with the datasets package).
    from trialdeck.engine.datasets._export import export_dataset

    result = export_dataset(dataset, format_, folder, val_fraction=val_fraction)
    if as_json:
        emit(result)
        return
    split = f"{result['train']} train + {result['val']} val samples" if result["val"] else f"{result['train']} samples"
    what = f"{result['images']} images ({result['layout']})" if format_ == "imagefolder" else ", ".join(result["arrays"])
    print(f"wrote {result['path']}: {split}, {what}")
    keys = "  ".join(f"{k} = {json.dumps(v)}" for k, v in result["preset_keys"].items())
    print(f"train on it with: {keys}")
