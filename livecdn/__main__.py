import sys

from livecdn.cli import main

sys.exit(main())
