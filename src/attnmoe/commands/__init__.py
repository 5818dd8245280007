"""Command implementations behind ``attnmoe`` (one module per subcommand).

Each module defines one function that typer turns into a subcommand; ``attnmoe.cli``
only registers them. They are the only place that knows about files, progress bars
and the command line; ``moe``/``attention`` never import from here.
"""
