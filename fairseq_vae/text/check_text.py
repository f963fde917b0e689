"""Check raw text before it is binarised: valid UTF-8, no empty lines and no carriage return
inside a line, or say where not.

fairseq-preprocess stops on invalid UTF-8 with a UnicodeDecodeError that names neither file nor
line, and turns an empty line into an empty sentence (its end-of-sentence token alone). A line
ends at "\n" (a "\r" just before it is part of the line end, as in Windows files); a lone "\r"
inside a line is refused, because any reader with Python's universal newlines (open()'s default)
would make two sentences of it and shift every later line against its labels.
scripts/prepare_data.sh runs this first (as a plain script: it needs neither fairseq nor torch)::

    python fairseq_vae/text/check_text.py raw/train.txt raw/valid.txt raw/test.txt

and it exits with status 1 and one error line per file, naming the first bad lines.
"""

import argparse
import logging
import sys
from typing import List

logger = logging.getLogger("fairseq_vae.text.check_text")

SHOWN = 5  # line numbers named per kind of problem


def text_problems(path: str) -> List[str]:
    """What is wrong with the text file at ``path``, one message per kind of problem."""
    bad_utf8, empty, carriage_return = [], [], []
    with open(path, "rb") as f:
        # lines end at "\n" (or "\r\n"), as scripts/spm_encode.py and gpt2_encode.py read them
        for number, line in enumerate(f, start=1):
            if b"\r" in line.rstrip(b"\n").removesuffix(b"\r"):
                carriage_return.append(str(number))
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad_utf8.append(f"{number} at byte {error.start + 1}")
                continue
            if not text.strip():  # whitespace alone binarises to an empty sentence too
                empty.append(str(number))
    found = []
    for lines, what in (
        (bad_utf8, "not UTF-8"),
        (empty, "empty"),
        (carriage_return, "split by a carriage return (\\r) inside the line"),
    ):
        if lines:
            more = ", ..." if len(lines) > SHOWN else ""
            count = "1 line is" if len(lines) == 1 else f"{len(lines)} lines are"
            where = ("line " if len(lines) == 1 else "lines ") + ", ".join(lines[:SHOWN])
            found.append(f"{path}: {count} {what} ({where}{more})")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="raw text files, one sentence per line")
    args = parser.parse_args(argv)
    found = [problem for path in args.files for problem in text_problems(path)]
    for problem in found:
        logger.error(problem)
    return 1 if found else 0


if __name__ == "__main__":
    logging.basicConfig(format="%(name)s: error: %(message)s", stream=sys.stderr)
    sys.exit(main())
