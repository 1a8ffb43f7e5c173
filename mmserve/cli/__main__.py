"""`python -m mmserve.cli ...`, as torchrun and the tests start it."""
import sys

from mmserve.cli import main

sys.exit(main())
