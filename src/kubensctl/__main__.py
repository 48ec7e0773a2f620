import sys

from kubensctl.cli import main

sys.exit(main())
