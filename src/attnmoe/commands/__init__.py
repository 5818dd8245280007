"""Command implementations behind ``attnmoe`` (one module per subcommand).

Each module defines one function that typer turns into a subcommand; ``attnmoe.cli`` only
registers them. The commands are the only place that knows about the command line: option
parsing, one-line error messages on stderr and exit codes. Files and progress bars belong to
the layers that run jobs (``attnmoe.train``, ``attnmoe.estimation``' study), never to
``moe``, ``attention`` or ``tasks``, which know nothing about files, CLIs or progress bars.
"""
