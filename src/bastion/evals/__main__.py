import sys

from bastion.evals._gate import main

sys.exit(main(prog="python -m bastion.evals"))
