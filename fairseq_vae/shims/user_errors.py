"""A user's slip ends every command in one line, fairseq's own commands included.

The plugin's deliberate errors (a ValueError or FileNotFoundError raised by fairseq_vae's own
code: a prior of another checkpoint, a missing file, a ragged labels file, an option out of
range) already name the file, option or line; fairseq-train, -generate, -interactive and
-validate would bury that message under a traceback of fairseq's frames. The hook prints
``<command>: error: <message>`` instead and the process exits 1, as an uncaught exception
does. Anything else, including a ValueError raised inside torch or fairseq, is a bug or not
ours to explain, and keeps its traceback.
"""

import os
import sys

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_ERRORS = (ValueError, FileNotFoundError)


def raised_by_the_plugin(error: BaseException) -> bool:
    """Whether ``error`` is one of ours: a USER_ERRORS raised by a statement of this package
    (the innermost frame of its traceback is in a fairseq_vae file)."""
    if not isinstance(error, USER_ERRORS):
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PACKAGE + os.sep)


def one_line_for_user_errors(kind, error, tb, fallback=sys.excepthook):
    if raised_by_the_plugin(error):
        command = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "fairseq_vae"
        message = " ".join(str(error).split("\n"))
        sys.stderr.write(f"{command}: error: {message}\n")
        return
    fallback(kind, error, tb)


# installed once, whatever imports the plugin first (a command's --user-dir, a script, a test)
if getattr(sys.excepthook, "__name__", "") != one_line_for_user_errors.__name__:
    sys.excepthook = one_line_for_user_errors
