import sys

from refattn.cli import main

sys.exit(main())
