import os
import sys

from leads.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:
    # The reader went away (`python -m leads list | head`): the rest is not wanted. Point stdout
    # at /dev/null so that Python's own flush at exit does not complain a second time.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 1
sys.exit(code)
