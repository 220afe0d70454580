"""`python -m kbsync` runs the CLI."""

from kbsync.cli import main

if __name__ == "__main__":
    main()
