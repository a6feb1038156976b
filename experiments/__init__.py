"""Built-in presets: TOML data only, never executed. This file only makes the folder a
package, so `importlib.resources.files("trialdeck.experiments")` finds the presets wherever
trialdeck is installed."""
