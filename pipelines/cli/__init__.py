"""What every command line needs: environment defaults, ``--set`` parsing, atomic files, progress."""
