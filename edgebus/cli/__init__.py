"""The edgebus command line: parse, call the library, print. TensorFlow loads only inside the
commands that need it, so `edgebus --help` and the device path stay light. One module per command
group: train.py (train, grid, cv), export.py, cart.py (bench, report, predict, bundle), tools.py."""

import typer

from edgebus.cli import cart, export, tools
from edgebus.cli.train import cv_app, grid_app, train_app

app = typer.Typer(help="Breast-ultrasound lesion models: train -> int8 TFLite export -> benchmark -> report.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(train_app, name="train")
app.add_typer(grid_app, name="grid")
app.add_typer(cv_app, name="cv")
app.add_typer(tools.weights_app, name="weights")
for group in (export, cart, tools):
    group.register(app)

__all__ = ["app"]
