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
            where = "" if self.prog == "ssl-aug" else f"{self.prog}: "
            self.exit(2, f"ssl-aug: error: {where}{message}{did_you_mean(message)} (see {self.prog} --help)\n")

    return OneLineParser(**kwargs)


def did_you_mean(message: str) -> str:
    """'; did you mean 'train'?' for argparse's "invalid choice: 'trian' (choose from ...)", else ''."""
    import difflib
    import re

    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if not found:
        return ""
    choices = re.findall(r"'([^']*)'", found.group(2)) or [c.strip() for c in found.group(2).split(",")]
    close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
