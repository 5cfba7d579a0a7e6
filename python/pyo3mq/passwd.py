"""`pyo3mq passwd`: manage a password file, as `mosquitto_passwd` does.

    pyo3mq passwd [-c] [-I ITERATIONS] FILE USER       prompts for the password twice
    pyo3mq passwd [-c] [-I ITERATIONS] -b FILE USER PASSWORD
    pyo3mq passwd -D FILE USER                         deletes USER

Entries are `USER:$7$ITERATIONS$SALT$HASH`, PBKDF2-HMAC-SHA512 with a 12-byte random
salt, base64-encoded: the format Mosquitto 2.x writes and reads, so one file serves
both brokers (`password_file`). Other users' lines are kept as they are, in order.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence

#: Mosquitto's default: PBKDF2 is deliberately slow, but a broker verifies a password at
#: every CONNECT, so the count is a trade-off; raise it with -I.
DEFAULT_ITERATIONS = 101
SALT_BYTES = 12


class PasswdError(Exception):
    """A problem to report to the user, with exit status 1."""


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The `$7$` entry (without `USER:`) for `password`."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _check_name(user: str) -> None:
    if not user or ":" in user or any(c in user for c in "\r\n"):
        raise PasswdError(f"invalid username {user!r}: it must be non-empty, without ':'")


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise PasswdError(f"{path}: no such file (use -c to create it)") from None


def _write_lines(path: str, lines: list[str]) -> None:
    """Writes atomically (a temporary file renamed over the old one), mode 0600: a
    crash never leaves half a password file, and other users cannot read the hashes."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(f"{line}\n" for line in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _without_user(lines: list[str], user: str) -> tuple[list[str], bool]:
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    return kept, len(kept) != len(lines)


def _prompt() -> str:
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Reenter password: ")
    if first != second:
        raise PasswdError("passwords do not match")
    if not first:
        raise PasswdError("empty password")
    return first


def run(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="pyo3mq passwd",
        description="Add, change or delete users of a mosquitto-compatible password file.",
    )
    parser.add_argument("-c", action="store_true", help="create the file (overwrites it)")
    parser.add_argument("-b", action="store_true", help="take the password from the command line")
    parser.add_argument("-D", action="store_true", help="delete USER")
    parser.add_argument("-I", type=int, default=DEFAULT_ITERATIONS, metavar="ITERATIONS")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("user", metavar="USER")
    parser.add_argument("password", metavar="PASSWORD", nargs="?")
    args = parser.parse_args(argv)
    _check_name(args.user)
    if args.D:
        if args.c or args.b or args.password is not None:
            raise PasswdError("-D takes only FILE and USER")
        lines, found = _without_user(_read_lines(args.file), args.user)
        if not found:
            raise PasswdError(f"user {args.user!r} is not in {args.file}")
        _write_lines(args.file, lines)
        return
    if args.b != (args.password is not None):
        raise PasswdError("give PASSWORD with -b, and only with -b")
    if args.I < 1:
        raise PasswdError("-I: iterations must be at least 1")
    password = args.password if args.b else _prompt()
    entry = f"{args.user}:{hash_password(password, args.I)}"
    lines = [] if args.c else _read_lines(args.file)
    # A changed password keeps its line's place, as mosquitto_passwd does.
    at = next((i for i, line in enumerate(lines) if line.split(":", 1)[0] == args.user), None)
    if at is None:
        lines.append(entry)
    else:
        lines[at] = entry
    _write_lines(args.file, lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (PasswdError, OSError) as exc:
        print(f"pyo3mq passwd: {exc}", file=sys.stderr)
        return 1
    return 0
