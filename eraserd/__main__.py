"""``python -m eraserd``: the same commands as ``eraserd``."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="eraserd")
