import sys

from segcache.cli import main

sys.exit(main())
