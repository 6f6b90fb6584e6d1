import sys

from bastion.cli._main import main

sys.exit(main())
