"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint), with the fix in its message."""


class ConfigError(UserError):
    """An unknown key, a wrong type or an impossible value in a config."""


class DataError(UserError):
    """A dataset that is missing or laid out in a way rn50 cannot read."""


class CheckpointError(UserError):
    """A file that is not an rn50 checkpoint, or one that does not fit the run."""


class StorageError(UserError):
    """The disk is full: nothing was half-written, the previous files are intact."""


class Diverged(Exception):
    """The run broke: the training loss stayed NaN/inf for train.max_bad_steps steps in a row,
    or an epoch ended (or a rolling save came) with NaN/inf weights, BatchNorm statistics or
    validation loss, or with no step applied. Nothing of the broken state was saved."""


def one_line(e: BaseException) -> str:
    """`e`'s message with its white space (newlines too) folded to single spaces, or its type's
    name when the message is empty: for error messages that must stay on one line."""
    return " ".join(str(e).split()) or type(e).__name__


EXCERPT_CHARS = 60


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A repr of `value` of at most `limit` characters, built without the whole repr.

    Every message that quotes a user's value goes through this: a value can be a 10 MB string
    or a YAML structure that expands to billions of items (an alias bomb), and formatting it
    whole would take the memory of the machine. reprlib stops at a few items per level and a
    few levels deep; newlines come out escaped, so the message stays one line.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
