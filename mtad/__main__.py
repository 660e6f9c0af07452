"""`python -m mtad` (also what `torchrun -m mtad` runs)."""
import sys

from mtad.cli import main

sys.exit(main())
