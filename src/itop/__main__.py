"""`itop` / `python -m itop`: the command line (train, report, doctor)."""

from __future__ import annotations

import sys

USAGE = "usage: itop {train,report,doctor} [options]   (itop train --help, itop report --help, itop doctor --help, itop --version)"


def version() -> str:
    """The installed distribution's version; a source checkout that is not installed falls back to
    `itop.__version__`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("itop")
    except PackageNotFoundError:
        import itop

        return getattr(itop, "__version__", "unknown")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"itop {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "doctor") and not {"-h", "--help"} & set(rest):
        from itop.sparse import dispatch

        try:
            dispatch.read_mode()  # a bad ITOP_KERNELS: one line now, not a traceback mid-run
        except ValueError as error:
            print(f"itop: error: {error}", file=sys.stderr)
            return 2
    if command == "train":
        from itop.train.cli import train_main

        return train_main(rest)
    if command == "report":
        from itop.report.cli import main as report_main

        return report_main(rest)
    if command == "doctor":
        from itop.doctor import main as doctor_main

        return doctor_main(rest)
    print(f"itop: error: unknown command {command!r}; choose train, report or doctor.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
