"""``python -m docconv``: the same as the ``docconv`` command."""

from docconv.cli import main

if __name__ == "__main__":
    main()
