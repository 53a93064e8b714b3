import sys

from rayaccel.cli import main

sys.exit(main())
