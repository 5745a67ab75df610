"""Project-wide error type: the CLI prints these as clean messages with a non-zero exit."""


class MMCLError(Exception):
    """A user-facing error: bad input, missing file, mismatched contract.

    The message must name the file, sample or key, and say what was expected.
    """
