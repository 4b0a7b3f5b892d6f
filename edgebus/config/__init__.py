"""Settings declared once. `options.OPTIONS` holds every command-line option of edgebus (name, kind,
help, range, choices); the training and export stages' dataclasses take their fields from it
(`field`), the CLI derives its typer options from it (edgebus.cli.options), a settings file
(`--config`, TOML or YAML) is read against it (`files`), and `check` validates a value by it. One
merge rule everywhere: the stage's default < the settings file < the command line."""

from edgebus.config.files import read_config, record_config, write_config
from edgebus.config.options import OPTIONS, Option, check, field, settings_of

__all__ = ["OPTIONS", "Option", "check", "field", "read_config", "record_config", "settings_of", "write_config"]
