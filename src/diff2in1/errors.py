class InputError(ValueError):
    """A problem with a user's file or argument; the CLI prints it as one line.

    A `ValueError`, as diffusers pipelines raise for bad arguments, so `except ValueError` around
    a pipeline call catches it too."""


def one_line(error: BaseException) -> str:
    """The message of `error` as one line. An error re-raised by a DataLoader worker carries the
    worker's whole traceback ("Caught InputError in DataLoader worker process 0. Original
    Traceback ..."): its own message is the last line, after the exception's name."""
    text = str(error)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        name = type(error).__name__
        for ln in reversed(lines):
            head, sep, rest = ln.partition(f"{name}: ")
            if sep and (not head or head.endswith(".")):
                return " ".join(rest.split())
    return " ".join(text.split())
