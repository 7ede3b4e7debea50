class InputError(Exception):
    """A problem with a user's file or argument; the CLI prints it as one line."""
