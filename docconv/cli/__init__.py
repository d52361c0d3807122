"""The ``docconv`` command line, one module per subcommand.

* :mod:`~docconv.cli.app` - the ``docconv`` group and the entry point (:func:`main`);
* :mod:`~docconv.cli.convert` - ``docconv [convert] FILE...``: options to a run;
* :mod:`~docconv.cli.rerender`, :mod:`~docconv.cli.models`, :mod:`~docconv.cli.doctor`,
  :mod:`~docconv.cli.config` - the other subcommands;
* :mod:`~docconv.cli.settings` - defaults < config file < environment < command line;
* :mod:`~docconv.cli.exit_codes` - the exit codes, which every command's help lists;
* :mod:`~docconv.cli.choices`, :mod:`~docconv.cli.listing`, :mod:`~docconv.cli.signals` - the
  option choices, the table printer of the listing commands, SIGTERM handling.

Importing this package loads no torch: the engine is imported when a run first needs it.
"""

from docconv.cli.app import app, main

__all__ = ["app", "main"]
