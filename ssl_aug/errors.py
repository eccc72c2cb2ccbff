"""One exception type for every user-facing problem: the CLI prints its message as one line."""


class SslAugError(Exception):
    """A problem with the user's input (data, recipe, checkpoint, arguments).

    The message is a single line naming the bad value and what is allowed.
    """


def one_line_parser(**kwargs):
    """An argparse parser that reports a bad argument as one line `ssl-aug: error: ...` (exit 2)."""
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message: str):
            self.exit(2, f"ssl-aug: error: {self.prog}: {message} (see {self.prog} --help)\n")

    return OneLineParser(**kwargs)
