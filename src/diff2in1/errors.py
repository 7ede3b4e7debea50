class InputError(ValueError):
    """A problem with a user's file or argument; the CLI prints it as one line.

    A `ValueError`, as diffusers pipelines raise for bad arguments, so `except ValueError` around
    a pipeline call catches it too."""
