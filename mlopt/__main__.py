import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line itself was being imported: nothing was done yet
    print("mlopt: interrupted by SIGINT; no partial output was left", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
