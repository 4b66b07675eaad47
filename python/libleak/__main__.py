"""`libleak` and `python -m libleak`: run the packaged Rust command with the same arguments.

Must never interpret the arguments or the outcome: the process is replaced by the command
(exec), so its output, signals and exit status are exactly the command's.
"""

import os
import sys


def main():
    from libleak import binary

    try:
        path = binary()
    except FileNotFoundError as error:
        sys.stderr.write(f"libleak: {error}\n")
        return 2
    try:
        os.execv(path, ["libleak", *sys.argv[1:]])
    except OSError as error:
        sys.stderr.write(f"libleak: cannot run {path}: {error}\n")
        return 2
    return 0  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main())
