"""The commands of the CLI, one module each: ``add_arguments(parser)`` declares its flags, ``run(args)`` does
it and returns the exit status. :mod:`diffvae.cli` holds the parser, ``--config`` handling and the table
of commands."""
