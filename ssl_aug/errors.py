"""One exception type for every user-facing problem: the CLI prints its message as one line."""


class SslAugError(Exception):
    """A problem with the user's input (data, recipe, checkpoint, arguments).

    The message is a single line naming the bad value and what is allowed.
    """
